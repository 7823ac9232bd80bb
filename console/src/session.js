// The management key lives in sessionStorage only: it is gone when the tab closes and is never
// written to localStorage, a cookie or a URL.
const KEY = "turnout.managementKey";
const ORG = "turnout.org";

export function loadSession() {
  const key = sessionStorage.getItem(KEY);
  const org = sessionStorage.getItem(ORG);
  return key && org ? { key, org } : null;
}

export function saveSession({ key, org }) {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ORG, org);
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ORG);
}
