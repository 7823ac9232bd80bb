import { enc } from "../api.js";
import { ErrorNote, StateBadge, TrafficSplit } from "../components/bits.jsx";
import { ago, versionLabel, versionOf } from "../format.js";
import { usePoll } from "../poll.js";
import { loadEndpoint, servingLabel } from "./endpoint-data.js";

export function EndpointsPage({ api, org }) {
  const { data, error, loading } = usePoll(
    async () => {
      const list = await api.get(`/orgs/${enc(org)}/endpoints`);
      return Promise.all(
        list.endpoints.map(async (item) => ({ item, ...(await loadEndpoint(api, item.endpoint_id)) })),
      );
    },
    2000,
    [org],
  );
  return (
    <section>
      <h2>Endpoints</h2>
      <ErrorNote error={error} label="Could not refresh" />
      {loading && !data ? <p class="muted">Loading…</p> : null}
      {data && data.length === 0 ? (
        <p class="muted">No endpoints in {org} yet. An operator creates them with <code>turnout admin endpoint create</code>.</p>
      ) : null}
      <div class="cards">
        {(data ?? []).map((e) => (
          <EndpointCard key={e.item.endpoint_id} {...e} />
        ))}
      </div>
    </section>
  );
}

function EndpointCard({ item, status, serving, rollouts }) {
  const label = servingLabel(serving);
  const items = status.replicas?.items;
  return (
    <article class="card endpoint-card" data-testid={`endpoint-${item.endpoint_id}`}>
      <header>
        <a href={`#/endpoints/${enc(item.endpoint_id)}`} class="title">{item.endpoint_id}</a>
        <span class="muted">{item.model_arch_id}</span>
      </header>
      <dl class="facts">
        <dt>serving</dt>
        <dd data-testid="serving-version">
          {label ? versionLabel(label.id, label.alias) : <span class="muted">nothing yet</span>}
        </dd>
        <dt>replicas</dt>
        <dd data-testid="replica-count">{replicaSummary(status, serving)}</dd>
        <dt>updated</dt>
        <dd>{ago(status.updated)}</dd>
      </dl>
      {Array.isArray(items) && items.length ? (
        <ul class="replica-dots" aria-label="replicas">
          {items.map((r) => (
            <li key={r.replica_id} class={`dot state-${r.state}`} title={`${r.replica_id} v${r.version_id} on ${r.node ?? "?"} ${r.state}`} />
          ))}
        </ul>
      ) : null}
      {rollouts.map(({ model, op }) => (
        <div class="rollout-line" key={model.id} data-testid="rollout-in-progress">
          <a href={`#/deployments/${enc(model.id)}`}>
            rollout to {versionLabel(versionOf(model.model), model.version_alias)}
          </a>{" "}
          <StateBadge state={model.state} /> {op?.response?.step ? <span class="step">{op.response.step}</span> : null}
          <TrafficSplit percent={op?.response?.traffic_percent} from={label ? `v${label.id}` : "old"} to={`v${versionOf(model.model)}`} />
        </div>
      ))}
    </article>
  );
}

export function replicaSummary(status, serving) {
  if (status.replicas && typeof status.replicas.ready === "number") {
    return `${status.replicas.ready}/${status.replicas.total} ready`;
  }
  const counts = status.deployed_models.filter((d) => d.replicas);
  if (!counts.length) return "none";
  const ready = counts.reduce((n, d) => n + d.replicas.ready, 0);
  const total = counts.reduce((n, d) => n + d.replicas.total, 0);
  const mine = serving?.replicas ? ` (serving ${serving.replicas.ready}/${serving.replicas.total})` : "";
  return `${ready}/${total} ready${counts.length > 1 ? mine : ""}`;
}
