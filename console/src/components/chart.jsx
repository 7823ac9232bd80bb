// A small multi-series line chart in SVG: one line per version, the latest value in the legend.
// `series` is [{label, points: [[t, value], ...]}]; times are unix seconds.

const COLORS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2"];
const W = 260;
const H = 70;
const PAD = 4;

export function colorFor(index) {
  return COLORS[index % COLORS.length];
}

export function Chart({ title, series, format = (v) => String(v), testId }) {
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    return (
      <figure class="chart" data-testid={testId}>
        <figcaption>{title}</figcaption>
        <div class="chart-empty muted">no samples yet</div>
      </figure>
    );
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const vmax = Math.max(...all.map((p) => p[1]), 0) || 1;
  const x = (t) => PAD + (t1 === t0 ? W - 2 * PAD : ((t - t0) / (t1 - t0)) * (W - 2 * PAD));
  const y = (v) => H - PAD - (v / vmax) * (H - 2 * PAD);
  return (
    <figure class="chart" data-testid={testId}>
      <figcaption>
        {title} <span class="muted">max {format(vmax)}</span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-label={title}>
        <line x1={PAD} y1={H - PAD} x2={W - PAD} y2={H - PAD} class="axis" />
        {series.map((s, i) =>
          s.points.length === 1 ? (
            <circle key={s.label} cx={x(s.points[0][0])} cy={y(s.points[0][1])} r="2.5" fill={colorFor(i)} />
          ) : (
            <polyline
              key={s.label}
              fill="none"
              stroke={colorFor(i)}
              stroke-width="1.8"
              points={s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}
            />
          ),
        )}
      </svg>
      <ul class="legend">
        {series.map((s, i) => (
          <li key={s.label}>
            <span class="swatch" style={{ background: colorFor(i) }} />
            {s.label}: {s.points.length ? format(s.points[s.points.length - 1][1]) : "–"}
          </li>
        ))}
      </ul>
    </figure>
  );
}
