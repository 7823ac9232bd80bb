// The rollout policy of a deployment (DESIGN §8). `surge` is the published behaviour and
// sends no `rollout` object at all; any other strategy sends one.

export const DEFAULT_POLICY = {
  strategy: "surge",
  steps: [
    { traffic_percent: 10, hold_seconds: 60 },
    { traffic_percent: 50, hold_seconds: 120 },
  ],
  sticky: "none",
  stickyHeader: "x-session-id",
  gates: {
    min_requests: "",
    max_error_rate: "",
    max_stream_abort_rate: "",
    max_ttft_p95_ratio: "",
    max_tpot_p95_ratio: "",
  },
  goldenPrompt: "",
  goldenRegex: "",
  on_gate_failure: "rollback",
};

const GATE_FIELDS = [
  ["min_requests", "min requests", "50", "1"],
  ["max_error_rate", "max error rate", "0.02", "0.001"],
  ["max_stream_abort_rate", "max stream abort rate", "0.02", "0.001"],
  ["max_ttft_p95_ratio", "max TTFT p95 ratio", "1.5", "0.1"],
  ["max_tpot_p95_ratio", "max TPOT p95 ratio", "1.5", "0.1"],
];

export function rolloutBody(policy) {
  if (policy.strategy === "surge") return undefined;
  const rollout = { strategy: policy.strategy };
  if (policy.strategy === "canary") {
    rollout.steps = policy.steps.map((s) => ({
      traffic_percent: Number(s.traffic_percent),
      hold_seconds: Number(s.hold_seconds),
    }));
    rollout.sticky = policy.sticky === "header" ? `header:${policy.stickyHeader.trim()}` : policy.sticky;
  }
  const gates = {};
  for (const [field] of GATE_FIELDS) {
    if (String(policy.gates[field]).trim() !== "") gates[field] = Number(policy.gates[field]);
  }
  if (policy.goldenPrompt.trim()) {
    gates.golden_prompts = [
      {
        messages: [{ role: "user", content: policy.goldenPrompt }],
        expect_regex: policy.goldenRegex || ".",
      },
    ];
  }
  if (Object.keys(gates).length) rollout.gates = gates;
  rollout.on_gate_failure = policy.on_gate_failure;
  return rollout;
}

export function PolicyForm({ policy, onChange }) {
  const set = (patch) => onChange({ ...policy, ...patch });
  const setStep = (i, patch) => set({ steps: policy.steps.map((s, j) => (i === j ? { ...s, ...patch } : s)) });
  const canary = policy.strategy === "canary";
  return (
    <fieldset class="policy" data-testid="policy-form">
      <legend>Rollout policy</legend>
      <label class="inline">
        strategy
        <select name="strategy" value={policy.strategy} onChange={(e) => set({ strategy: e.currentTarget.value })}>
          <option value="surge">surge: start the new set, then switch (default)</option>
          <option value="rolling">rolling: one replica at a time</option>
          <option value="canary">canary: weighted steps with gates</option>
          <option value="in_place">in place: reload weights inside running replicas</option>
        </select>
      </label>
      {canary ? (
        <div class="steps">
          <div class="subhead">steps</div>
          {policy.steps.map((s, i) => (
            <div class="step-row" key={i}>
              <label class="inline">
                traffic %
                <input type="number" min="0" max="100" value={s.traffic_percent} onInput={(e) => setStep(i, { traffic_percent: e.currentTarget.value })} />
              </label>
              <label class="inline">
                hold s
                <input type="number" min="0" value={s.hold_seconds} onInput={(e) => setStep(i, { hold_seconds: e.currentTarget.value })} />
              </label>
              <button type="button" class="link" onClick={() => set({ steps: policy.steps.filter((_, j) => j !== i) })}>remove</button>
            </div>
          ))}
          <div>
            <button type="button" class="link" onClick={() => set({ steps: [...policy.steps, { traffic_percent: 100, hold_seconds: 60 }] })}>
              add a step
            </button>
          </div>
          <label class="inline">
            sticky sessions
            <select value={policy.sticky} onChange={(e) => set({ sticky: e.currentTarget.value })}>
              <option value="none">none</option>
              <option value="api_key">by API key</option>
              <option value="header">by header</option>
            </select>
            {policy.sticky === "header" ? (
              <input value={policy.stickyHeader} onInput={(e) => set({ stickyHeader: e.currentTarget.value })} />
            ) : null}
          </label>
        </div>
      ) : null}
      {policy.strategy !== "surge" ? (
        <div class="gates-form">
          <div class="subhead">gates <span class="muted">(empty = not judged)</span></div>
          {GATE_FIELDS.map(([field, label, placeholder, step]) => (
            <label class="inline" key={field}>
              {label}
              <input
                type="number"
                step={step}
                min="0"
                placeholder={placeholder}
                value={policy.gates[field]}
                onInput={(e) => set({ gates: { ...policy.gates, [field]: e.currentTarget.value } })}
              />
            </label>
          ))}
          <label class="inline">
            golden prompt
            <input value={policy.goldenPrompt} placeholder="2+2?" onInput={(e) => set({ goldenPrompt: e.currentTarget.value })} />
          </label>
          <label class="inline">
            expect regex
            <input value={policy.goldenRegex} placeholder="\b4\b" onInput={(e) => set({ goldenRegex: e.currentTarget.value })} />
          </label>
          <label class="inline">
            on gate failure
            <select value={policy.on_gate_failure} onChange={(e) => set({ on_gate_failure: e.currentTarget.value })}>
              <option value="rollback">roll back</option>
              <option value="pause">pause</option>
            </select>
          </label>
        </div>
      ) : null}
    </fieldset>
  );
}
