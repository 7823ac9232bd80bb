// Builds the console into the Python package (src/turnout/console/), which is committed, so
// installing or running Turnout needs no Node.js. `make console` runs this.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

const here = fileURLToPath(new URL(".", import.meta.url));
const outDir = join(here, "..", "src", "turnout", "console");

// The files whose content decides the build. tests/console/test_bundle.py hashes the same
// list the same way, so a source change without `make console` fails the tests.
const SOURCES = ["index.html", "package.json", "package-lock.json", "vite.config.js", "src"];

function listFiles(path) {
  const full = join(here, path);
  try {
    return readdirSync(full, { withFileTypes: true }).flatMap((e) =>
      listFiles(join(path, e.name)),
    );
  } catch (err) {
    if (err.code === "ENOTDIR") return [path];
    throw err;
  }
}

export function sourceDigest() {
  const files = SOURCES.flatMap(listFiles)
    .map((p) => relative(".", p).split(sep).join("/"))
    .sort();
  const whole = createHash("sha256");
  for (const file of files) {
    const own = createHash("sha256").update(readFileSync(join(here, file))).digest("hex");
    whole.update(`${file}\n${own}\n`);
  }
  return whole.digest("hex");
}

function buildInfo() {
  return {
    name: "turnout-build-info",
    closeBundle() {
      const info = { source_sha256: sourceDigest() };
      writeFileSync(join(outDir, "build-info.json"), JSON.stringify(info, null, 2) + "\n");
    },
  };
}

export default defineConfig({
  // Relative, so the console also works behind a proxy that adds a path prefix.
  base: "./",
  plugins: [preact({ devtoolsInProd: false, prefreshEnabled: false }), buildInfo()],
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npm run dev` against a local `turnout serve` on its default port.
    proxy: { "/management": "http://127.0.0.1:8080" },
  },
});
