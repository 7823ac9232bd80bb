import { useState } from "preact/hooks";
import { enc } from "../api.js";
import { navigate } from "../route.js";
import { versionLabel, versionOf } from "../format.js";
import { ErrorNote } from "./bits.jsx";
import { DEFAULT_POLICY, PolicyForm, rolloutBody } from "./policy.jsx";

// Deploys one version to one endpoint (POST /endpoints/{id}:deployModel), then opens the
// rollout's live page. Pass `endpoints` to choose the endpoint, or `versions` to choose the
// version; the other side is fixed.
export function DeployForm({ api, endpoints, endpointId, versions, versionName, onClose }) {
  const [endpoint, setEndpoint] = useState(endpointId ?? endpoints?.[0]?.endpoint_id ?? "");
  const ready = (versions ?? []).filter((v) => v.response.sync_status === "done");
  const [model, setModel] = useState(versionName ?? ready[ready.length - 1]?.name ?? "");
  const [policy, setPolicy] = useState(DEFAULT_POLICY);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const body = { model };
    const rollout = rolloutBody(policy);
    if (rollout) body.rollout = rollout;
    try {
      const op = await api.post(`/endpoints/${enc(endpoint)}:deployModel`, body);
      navigate(`/deployments/${enc(op.name)}`);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  }

  return (
    <form class="card deploy-form" onSubmit={submit} data-testid="deploy-form">
      <h3>Deploy</h3>
      {endpoints ? (
        <label class="inline">
          endpoint
          <select name="endpoint" value={endpoint} onChange={(e) => setEndpoint(e.currentTarget.value)} required>
            {endpoints.map((e) => (
              <option key={e.endpoint_id} value={e.endpoint_id}>{e.endpoint_id}</option>
            ))}
          </select>
        </label>
      ) : (
        <p>endpoint <strong>{endpointId}</strong></p>
      )}
      {versions ? (
        <label class="inline">
          version
          <select name="version" value={model} onChange={(e) => setModel(e.currentTarget.value)} required>
            {ready.map((v) => (
              <option key={v.name} value={v.name}>{versionLabel(versionOf(v.name), v.response.version_aliases.join(", "))}</option>
            ))}
          </select>
        </label>
      ) : (
        <p>
          version <strong title={model}>{versionLabel(versionOf(model))}</strong>
        </p>
      )}
      {endpoints && endpoints.length === 0 ? <p class="muted">No endpoint of this architecture.</p> : null}
      <PolicyForm policy={policy} onChange={setPolicy} />
      <div class="buttons">
        <button type="submit" class="primary" disabled={busy || !endpoint || !model} data-testid="deploy-submit">
          {busy ? "Deploying…" : "Deploy"}
        </button>
        {onClose ? <button type="button" onClick={onClose}>Close</button> : null}
      </div>
      <ErrorNote error={error} label="Not deployed" />
    </form>
  );
}
