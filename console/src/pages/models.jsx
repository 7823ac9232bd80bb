import { useState } from "preact/hooks";
import { enc } from "../api.js";
import { AliasEditor } from "../components/aliases.jsx";
import { ErrorNote, ProgressBar } from "../components/bits.jsx";
import { DeployForm } from "../components/deploy.jsx";
import { bytes, dateTime, shortDigest, versionOf } from "../format.js";
import { usePoll } from "../poll.js";

export function ModelsPage({ api, org }) {
  const { data, error, loading, refresh } = usePoll(
    async () => {
      const [archs, endpoints] = await Promise.all([
        api.get(`/orgs/${enc(org)}/models`),
        api.get(`/orgs/${enc(org)}/endpoints`),
      ]);
      const versions = await Promise.all(
        archs.model_architectures.map((arch) => api.get(`/orgs/${enc(org)}/models/${enc(arch)}/versions`)),
      );
      return {
        endpoints: endpoints.endpoints,
        archs: archs.model_architectures.map((arch, i) => ({ arch, versions: versions[i].model_versions })),
      };
    },
    // Quick while a sync runs, so its progress bar moves; slower once all are settled.
    (d) => (d && d.archs.some((a) => a.versions.some((v) => !v.done)) ? 1000 : 4000),
    [org],
  );
  return (
    <section data-testid="models-page">
      <h2>Models</h2>
      <ErrorNote error={error} label="Could not refresh" />
      {loading && !data ? <p class="muted">Loading…</p> : null}
      {(data?.archs ?? [])
        .filter((a) => a.versions.length)
        .map((a) => (
          <Architecture key={a.arch} api={api} {...a} endpoints={data.endpoints.filter((e) => e.model_arch_id === a.arch)} refresh={refresh} />
        ))}
      {data && data.archs.every((a) => !a.versions.length) ? (
        <p class="muted">
          No versions uploaded yet. Upload one with <code>POST /management/v1/orgs/{org}/models:upload</code> or{" "}
          <code>turnout models upload</code>.
        </p>
      ) : null}
      {data ? (
        <p class="muted">
          Architectures without versions: {data.archs.filter((a) => !a.versions.length).map((a) => a.arch).join(", ") || "none"}
        </p>
      ) : null}
    </section>
  );
}

function Architecture({ api, arch, versions, endpoints, refresh }) {
  const [open, setOpen] = useState(null); // {kind: "aliases"|"deploy", name}
  const toggle = (kind, name) => setOpen(open && open.kind === kind && open.name === name ? null : { kind, name });
  return (
    <div class="card arch" data-testid={`arch-${arch}`}>
      <h3>{arch}</h3>
      <table class="grid versions">
        <thead>
          <tr><th>version</th><th>aliases</th><th>sync</th><th>digest</th><th>size</th><th>created</th><th></th></tr>
        </thead>
        <tbody>
          {versions.map((v) => {
            const id = versionOf(v.name);
            const p = v.response.sync_progress;
            const isOpen = open && open.name === v.name;
            return [
              <tr key={v.name} data-testid={`version-${id}`}>
                <td>v{id}</td>
                <td>
                  {v.response.version_aliases.map((a) => (
                    <span class="chip" key={a}>{a}</span>
                  ))}
                </td>
                <td class="sync">
                  <span class={`badge sync-${v.response.sync_status}`}>{v.response.sync_status.replace("_", " ")}</span>
                  {p ? <ProgressBar done={p.bytes_done} total={p.bytes_total} label={`${bytes(p.bytes_done)} / ${bytes(p.bytes_total)}`} /> : null}
                  {v.error ? <div class="error-note">{v.error.message}</div> : null}
                </td>
                <td><code title={v.response.digest ?? ""}>{shortDigest(v.response.digest)}</code></td>
                <td>{p ? bytes(p.bytes_total) : ""}</td>
                <td>{dateTime(v.response.created)}</td>
                <td class="row-actions">
                  <button type="button" onClick={() => toggle("aliases", v.name)} data-testid={`aliases-${id}`}>Aliases…</button>
                  <button type="button" disabled={v.response.sync_status !== "done"} onClick={() => toggle("deploy", v.name)} data-testid={`deploy-${id}`}>
                    Deploy…
                  </button>
                </td>
              </tr>,
              isOpen ? (
                <tr key={`${v.name}-open`} class="opened">
                  <td colSpan={7}>
                    {open.kind === "aliases" ? (
                      <AliasEditor
                        api={api}
                        version={v}
                        siblings={versions.filter((o) => o.name !== v.name)}
                        onDone={() => {
                          setOpen(null);
                          refresh();
                        }}
                      />
                    ) : (
                      <DeployForm api={api} endpoints={endpoints} versionName={v.name} onClose={() => setOpen(null)} />
                    )}
                  </td>
                </tr>
              ) : null,
            ];
          })}
        </tbody>
      </table>
    </div>
  );
}
