import { enc } from "../api.js";
import { ActionButton, ErrorNote, GatesTable, StateBadge, TrafficSplit } from "../components/bits.jsx";
import { clock, dateTime, seconds, shortId, versionLabel, versionOf } from "../format.js";
import { usePoll } from "../poll.js";
import { navigate } from "../route.js";

// After these steps traffic already reaches the new version: cancel is refused (409
// deployment_switched) and rollback is the way back.
const SWITCHED = ["switched", "draining", "done"];

export function RolloutPage({ api, deploymentId }) {
  const { data, error, loading, refresh } = usePoll(
    async () => {
      const op = await api.get(`/deployments/${enc(deploymentId)}`);
      const endpoint = await api.get(`/endpoints/${enc(op.response.endpoint_id)}`).catch(() => null);
      return { op, endpoint };
    },
    (d) => (d && d.op.done ? 5000 : 1000),
    [deploymentId],
  );
  if (!data) {
    return (
      <section>
        <h2>Deployment {shortId(deploymentId)}</h2>
        {loading ? <p class="muted">Loading…</p> : <ErrorNote error={error} />}
      </section>
    );
  }
  const { op, endpoint } = data;
  const r = op.response;
  const serving = endpoint?.deployed_models.find((d) => d.serving) ?? null;
  const isServing = serving?.id === op.name;
  const fromLabel = serving && !isServing ? `v${versionOf(serving.model)}` : "old";
  const act = (verb) => async () => {
    await api.post(verb);
    refresh();
  };
  async function rollback() {
    const next = await api.post(`/endpoints/${enc(r.endpoint_id)}:rollback`);
    navigate(`/deployments/${enc(next.name)}`);
  }
  const inProgress = r.rollout_status === "in_progress";
  // Pause, resume and promote act on weighted steps (DESIGN §8): offered while such a rollout
  // runs, which the status shows by reporting its traffic share.
  const stepped = inProgress && typeof r.traffic_percent === "number";
  const base = `/deployments/${enc(op.name)}`;

  return (
    <section data-testid="rollout-page">
      <div class="page-head">
        <h2>
          Rollout of {versionLabel(r.version_id, r.version_alias)} to{" "}
          <a href={`#/endpoints/${enc(r.endpoint_id)}`}>{r.endpoint_id}</a>
        </h2>
        <span class="muted">deployment {op.name}</span>
      </div>
      <ErrorNote error={error} label="Could not refresh" />
      <div class="card">
        <dl class="facts wide">
          <dt>state</dt>
          <dd data-testid="rollout-state"><StateBadge state={r.rollout_status} />{op.done ? "" : <span class="live" title="updating live">live</span>}</dd>
          <dt>step</dt>
          <dd data-testid="rollout-step">{r.step ?? ""}</dd>
          <dt>serving now</dt>
          <dd data-testid="serving-version">{serving ? versionLabel(versionOf(serving.model), serving.version_alias) : "nothing"}</dd>
          <dt>submitted</dt>
          <dd>{dateTime(r.created)}</dd>
          <dt>last change</dt>
          <dd>{dateTime(r.updated)}</dd>
        </dl>
        {/* A split exists only while the rollout runs; afterwards one version has it all. */}
        <TrafficSplit percent={op.done ? undefined : r.traffic_percent} from={fromLabel} to={`v${r.version_id}`} />
        {op.error ? (
          <div class="error-note" role="alert" data-testid="rollout-error">
            <strong>{op.error.code}</strong>: {op.error.message}
          </div>
        ) : null}
        <div class="buttons">
          {!op.done && !SWITCHED.includes(r.step) ? (
            <ActionButton
              label="Cancel"
              kind="danger"
              confirm="Cancel this deployment? The serving version keeps serving."
              action={act(`/endpoints/${enc(r.endpoint_id)}${base}:cancel`)}
              testId="cancel"
            />
          ) : null}
          {stepped && r.step !== "paused" ? <ActionButton label="Pause" action={act(`${base}:pause`)} testId="pause" /> : null}
          {stepped && r.step === "paused" ? <ActionButton label="Resume" action={act(`${base}:resume`)} testId="resume" /> : null}
          {stepped ? (
            <ActionButton label="Promote" confirm="Skip the remaining steps and send all traffic to the new version?" action={act(`${base}:promote`)} testId="promote" />
          ) : null}
          {isServing || (inProgress && SWITCHED.includes(r.step)) ? (
            <ActionButton
              label="Roll back"
              busyLabel="Rolling back…"
              kind="danger"
              confirm={`Roll ${r.endpoint_id} back to the previously complete version?`}
              action={rollback}
              testId="rollback"
            />
          ) : null}
        </div>
      </div>
      <GatesTable gates={r.gates} />
      <Steps events={r.events ?? []} done={op.done} updated={r.updated} />
      <h3>Events</h3>
      <ol class="events" data-testid="events">
        {(r.events ?? []).map((e, i) => (
          <li key={i}>
            <time>{clock(e.at)}</time> <span class="step">{e.step}</span> {e.message}
          </li>
        ))}
      </ol>
    </section>
  );
}

// The steps the rollout went through, each with when it began and how long it took.
function Steps({ events, done, updated }) {
  const segments = [];
  for (const e of events) {
    const last = segments[segments.length - 1];
    if (!last || last.step !== e.step) segments.push({ step: e.step, at: e.at });
  }
  if (!segments.length) return null;
  const end = done ? Math.max(updated ?? 0, events[events.length - 1].at) : Date.now() / 1000;
  return (
    <ol class="step-strip" data-testid="steps">
      {segments.map((s, i) => {
        const until = i + 1 < segments.length ? segments[i + 1].at : end;
        const current = !done && i === segments.length - 1;
        return (
          <li key={i} class={current ? "current" : "past"}>
            <span class="step-name">{s.step}</span>
            <time>{clock(s.at)}</time>
            {s.step === "done" ? null : <span class="muted">{seconds(Math.max(0, until - s.at))}</span>}
          </li>
        );
      })}
    </ol>
  );
}
