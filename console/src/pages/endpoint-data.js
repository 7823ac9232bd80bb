import { enc } from "../api.js";
import { isActive, versionOf } from "../format.js";

// One endpoint's status plus the detail of each deployment still in flight (its step, and
// traffic and gates once the server reports them).
export async function loadEndpoint(api, endpointId) {
  const status = await api.get(`/endpoints/${enc(endpointId)}`);
  const active = status.deployed_models.filter((d) => isActive(d.state));
  const details = await Promise.all(active.map((d) => api.get(`/deployments/${enc(d.id)}`).catch(() => null)));
  const rollouts = active.map((d, i) => ({ model: d, op: details[i] }));
  const serving = status.deployed_models.find((d) => d.serving) ?? null;
  return { status, serving, rollouts };
}

export function servingLabel(serving) {
  if (!serving) return null;
  return { id: versionOf(serving.model), alias: serving.version_alias ?? null };
}
