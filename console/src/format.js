// Small display helpers; no state.

export function versionOf(modelName) {
  // "orgs/o/models/a/versions/3" -> "3"
  const parts = String(modelName || "").split("/");
  return parts[parts.length - 1];
}

export function versionLabel(id, alias) {
  return alias ? `v${id} · ${alias}` : `v${id}`;
}

export function clock(unix) {
  if (unix == null) return "";
  const d = new Date(unix * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function dateTime(unix) {
  if (unix == null) return "";
  const d = new Date(unix * 1000);
  return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
}

export function ago(unix, now = Date.now() / 1000) {
  if (unix == null) return "";
  const s = Math.max(0, Math.round(now - unix));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function seconds(s) {
  if (s == null) return "";
  return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
}

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export function shortDigest(digest) {
  if (!digest) return "";
  const [algo, hex] = digest.split(":");
  return hex ? `${algo}:${hex.slice(0, 12)}` : digest.slice(0, 16);
}

export const ACTIVE_STATES = ["not_started", "in_progress"];
export const isActive = (state) => ACTIVE_STATES.includes(state);
