import { useState } from "preact/hooks";
import { enc } from "../api.js";
import { ActionButton, ErrorNote, StateBadge, TrafficSplit } from "../components/bits.jsx";
import { DeployForm } from "../components/deploy.jsx";
import { EndpointMetrics } from "../components/metrics.jsx";
import { ago, dateTime, shortId, versionLabel, versionOf } from "../format.js";
import { usePoll } from "../poll.js";
import { navigate } from "../route.js";
import { loadEndpoint, servingLabel } from "./endpoint-data.js";
import { replicaSummary } from "./endpoints.jsx";

export function EndpointPage({ api, org, endpointId }) {
  const live = usePoll(() => loadEndpoint(api, endpointId), 1500, [endpointId]);
  const history = usePoll(() => api.get(`/endpoints/${enc(endpointId)}/deployments`), 3000, [endpointId]);
  const [deploying, setDeploying] = useState(null);

  if (!live.data) {
    return (
      <section>
        <h2>{endpointId}</h2>
        {live.loading ? <p class="muted">Loading…</p> : <ErrorNote error={live.error} />}
      </section>
    );
  }
  const { status, serving, rollouts } = live.data;
  const label = servingLabel(serving);

  async function openDeploy() {
    const body = await api.get(`/orgs/${enc(org)}/models/${enc(status.model_arch_id)}/versions`);
    setDeploying(body.model_versions);
  }
  async function rollback() {
    const op = await api.post(`/endpoints/${enc(endpointId)}:rollback`);
    navigate(`/deployments/${enc(op.name)}`);
  }

  return (
    <section data-testid="endpoint-page">
      <div class="page-head">
        <h2>{status.name}</h2>
        <span class="muted">{status.model_arch_id} · managed by {status.managing_org_name}</span>
      </div>
      <ErrorNote error={live.error} label="Could not refresh" />
      <div class="card">
        <dl class="facts wide">
          <dt>serving</dt>
          <dd data-testid="serving-version">{label ? versionLabel(label.id, label.alias) : <span class="muted">nothing yet</span>}</dd>
          <dt>replicas</dt>
          <dd>{replicaSummary(status, serving)}</dd>
          <dt>created</dt>
          <dd>{dateTime(status.created)}</dd>
          <dt>updated</dt>
          <dd>{ago(status.updated)}</dd>
        </dl>
        <div class="buttons">
          <ActionButton label="Deploy a version…" action={openDeploy} testId="open-deploy" />
          {serving ? (
            <ActionButton
              label="Roll back"
              busyLabel="Rolling back…"
              kind="danger"
              confirm={`Roll ${endpointId} back to the previously complete version?`}
              action={rollback}
              testId="rollback"
            />
          ) : null}
        </div>
      </div>
      {deploying ? (
        <DeployForm api={api} endpointId={endpointId} versions={deploying} onClose={() => setDeploying(null)} />
      ) : null}
      {rollouts.map(({ model, op }) => (
        <div class="card rollout-line" key={model.id} data-testid="rollout-in-progress">
          <a href={`#/deployments/${enc(model.id)}`}>rollout {shortId(model.id)} to {versionLabel(versionOf(model.model), model.version_alias)}</a>{" "}
          <StateBadge state={model.state} /> {op?.response?.step ? <span class="step">{op.response.step}</span> : null}
          <TrafficSplit percent={op?.response?.traffic_percent} from={label ? `v${label.id}` : "old"} to={`v${versionOf(model.model)}`} />
        </div>
      ))}
      <h3>Deployed models</h3>
      <table class="grid" data-testid="deployed-models">
        <thead>
          <tr><th>deployment</th><th>version</th><th>state</th><th>serving</th><th>replicas</th><th>created</th></tr>
        </thead>
        <tbody>
          {status.deployed_models.map((d) => (
            <tr key={d.id}>
              <td><a href={`#/deployments/${enc(d.id)}`}>{shortId(d.id)}</a></td>
              <td>{versionLabel(versionOf(d.model), d.version_alias)}</td>
              <td><StateBadge state={d.state} /></td>
              <td>{d.serving ? "yes" : ""}</td>
              <td>{d.replicas ? `${d.replicas.ready}/${d.replicas.total}` : ""}</td>
              <td>{dateTime(d.created)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <Replicas replicas={status.replicas} />
      <EndpointMetrics api={api} endpointId={endpointId} />
      <h3>History</h3>
      <ErrorNote error={history.error} />
      <table class="grid" data-testid="history">
        <thead>
          <tr><th>deployment</th><th>version</th><th>state</th><th>step</th><th>created</th><th>updated</th></tr>
        </thead>
        <tbody>
          {(history.data?.deployments ?? []).slice(0, 25).map((op) => (
            <tr key={op.name}>
              <td><a href={`#/deployments/${enc(op.name)}`}>{shortId(op.name)}</a></td>
              <td>{versionLabel(op.response.version_id, op.response.version_alias)}</td>
              <td><StateBadge state={op.response.rollout_status} /></td>
              <td>{op.response.step ?? ""}</td>
              <td>{dateTime(op.response.created)}</td>
              <td>{ago(op.response.updated)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

// Per-replica placement (`replicas.items` on the endpoint status), shown once the API has it.
function Replicas({ replicas }) {
  const items = replicas?.items;
  if (!Array.isArray(items)) return null;
  return (
    <>
      <h3>Replicas <span class="muted">{replicas.ready}/{replicas.total} ready</span></h3>
      <table class="grid" data-testid="replicas">
        <thead>
          <tr><th>replica</th><th>version</th><th>deployment</th><th>node</th><th>GPUs</th><th>state</th></tr>
        </thead>
        <tbody>
          {items.map((r) => (
            <tr key={r.replica_id}>
              <td>{r.replica_id}</td>
              <td>v{r.version_id}</td>
              <td><a href={`#/deployments/${enc(r.deployment_id)}`}>{shortId(r.deployment_id)}</a></td>
              <td>{r.node ?? ""}</td>
              <td>{Array.isArray(r.gpus) && r.gpus.length ? r.gpus.join(", ") : "–"}</td>
              <td><span class={`badge replica-${r.state}`}>{r.state}</span></td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
