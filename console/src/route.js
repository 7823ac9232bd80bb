import { useEffect, useState } from "preact/hooks";

// Hash routes (#/endpoints, #/endpoints/ID, #/deployments/ID, #/models): the server serves one
// index.html and never needs to know the console's pages.
export function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "endpoints" && parts[1]) return { page: "endpoint", id: parts[1] };
  if (parts[0] === "deployments" && parts[1]) return { page: "rollout", id: parts[1] };
  if (parts[0] === "models") return { page: "models" };
  return { page: "endpoints" };
}

export function navigate(path) {
  window.location.hash = `#${path}`;
}

export function useRoute() {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}
