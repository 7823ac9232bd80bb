import { useState } from "preact/hooks";

export function StateBadge({ state }) {
  if (!state) return null;
  return <span class={`badge state-${state}`} data-state={state}>{state.replace("_", " ")}</span>;
}

export function ErrorNote({ error, label }) {
  if (!error) return null;
  return (
    <div class="error-note" role="alert">
      {label ? <strong>{label}: </strong> : null}
      {error.message}
      {error.code ? <span class="muted"> ({error.code})</span> : null}
    </div>
  );
}

export function ProgressBar({ done, total, label }) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  return (
    <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow={Math.round(pct)}>
      <div class="progress-fill" style={{ width: `${pct}%` }} />
      <span class="progress-label">{label ?? `${Math.round(pct)}%`}</span>
    </div>
  );
}

// The traffic split between the serving version and the new one (DESIGN §8's
// response.traffic_percent): drawn only when the API reports it.
export function TrafficSplit({ percent, from, to }) {
  if (typeof percent !== "number") return null;
  const pct = Math.max(0, Math.min(100, percent));
  return (
    <div class="traffic" data-testid="traffic-split">
      <div class="traffic-bar">
        <div class="traffic-old" style={{ width: `${100 - pct}%` }}>{100 - pct >= 12 ? `${from} ${Math.round(100 - pct)}%` : ""}</div>
        <div class="traffic-new" style={{ width: `${pct}%` }}>{pct >= 12 ? `${to} ${Math.round(pct)}%` : ""}</div>
      </div>
    </div>
  );
}

// A button that runs an async action, shows that it is busy, and shows the API's message when
// the action fails. `confirm` asks first (for cancel and rollback).
export function ActionButton({ label, busyLabel, action, confirm: question, kind, testId }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  async function onClick() {
    if (question && !window.confirm(question)) return;
    setBusy(true);
    setError(null);
    try {
      await action();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <span class="action">
      <button type="button" class={kind || ""} disabled={busy} onClick={onClick} data-testid={testId}>
        {busy ? busyLabel || `${label}…` : label}
      </button>
      <ErrorNote error={error} />
    </span>
  );
}

export function GatesTable({ gates }) {
  if (!Array.isArray(gates) || gates.length === 0) return null;
  return (
    <table class="gates" data-testid="gates">
      <thead>
        <tr><th>gate</th><th>threshold</th><th>reading</th><th>verdict</th></tr>
      </thead>
      <tbody>
        {gates.map((g) => (
          <tr key={g.name}>
            <td>{g.name}</td>
            <td class="num">{fmtReading(g.threshold)}</td>
            <td class="num">{fmtReading(g.reading)}</td>
            <td><span class={`verdict verdict-${g.verdict}`}>{g.verdict ?? "pending"}</span></td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function fmtReading(value) {
  if (value == null) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  return String(value);
}
