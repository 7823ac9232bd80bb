import { useRef } from "preact/hooks";
import { enc } from "../api.js";
import { usePoll } from "../poll.js";
import { Chart } from "./chart.jsx";

const KEEP = 60; // samples per version (five minutes at one poll every 5 s)

// Per-version request rate, error rate and TTFT of one endpoint, from
// GET /management/v1/endpoints/{id}/metrics. Until the server offers that route (404) the
// charts are hidden and polling stops.
export function EndpointMetrics({ api, endpointId }) {
  const history = useRef(new Map());
  const { data, error } = usePoll(
    async () => {
      const body = await api.get(`/endpoints/${enc(endpointId)}/metrics`);
      record(history.current, body);
      return body;
    },
    (_, err) => (err && (err.status === 404 || err.status === 405) ? 0 : 5000),
    [endpointId],
  );
  if (!data || (error && error.status === 404)) return null;
  const versions = [...history.current.entries()];
  const series = (field, scale = 1) =>
    versions.map(([id, points]) => ({
      label: `v${id}`,
      points: points.filter((p) => p[field] != null).map((p) => [p.at, p[field] * scale]),
    }));
  return (
    <section class="metrics" data-testid="metrics">
      <h3>
        Traffic by version <span class="muted">(window {data.window_seconds ?? "?"} s)</span>
      </h3>
      <div class="charts">
        <Chart title="requests/s" series={series("requests_per_second")} format={(v) => v.toFixed(2)} testId="chart-rps" />
        <Chart title="error rate" series={series("error_rate", 100)} format={(v) => `${v.toFixed(1)}%`} testId="chart-errors" />
        <Chart title="TTFT p50" series={series("ttft_p50_ms")} format={(v) => `${v.toFixed(0)} ms`} testId="chart-ttft50" />
        <Chart title="TTFT p95" series={series("ttft_p95_ms")} format={(v) => `${v.toFixed(0)} ms`} testId="chart-ttft95" />
      </div>
    </section>
  );
}

function record(history, body) {
  const at = body?.at ?? Date.now() / 1000;
  for (const v of body?.versions ?? []) {
    const points = history.get(v.version_id) ?? [];
    if (points.length && points[points.length - 1].at === at) continue;
    points.push({ at, ...v });
    if (points.length > KEEP) points.shift();
    history.set(v.version_id, points);
  }
}
