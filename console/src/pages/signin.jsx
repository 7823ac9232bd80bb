import { useState } from "preact/hooks";
import { createApi, enc } from "../api.js";

// Checks the key against the org before keeping it: listing the org's endpoints answers 401
// for a bad key, 403 for another org's key and 404 for an unknown org, each with a message
// that says what to do.
export function SignIn({ onSignedIn, reason }) {
  const [org, setOrg] = useState("");
  const [key, setKey] = useState("");
  const [error, setError] = useState(reason);
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await createApi(key.trim()).get(`/orgs/${enc(org.trim())}/endpoints`);
      onSignedIn({ key: key.trim(), org: org.trim() });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <div class="signin">
      <form onSubmit={submit} class="card" data-testid="signin-form">
        <h1>Turnout console</h1>
        <p class="muted">Sign in with a management key of your org. The key stays in this tab only.</p>
        <label>
          Org name
          <input name="org" value={org} onInput={(e) => setOrg(e.currentTarget.value)} required autocomplete="organization" />
        </label>
        <label>
          Management key
          <input name="key" type="password" value={key} onInput={(e) => setKey(e.currentTarget.value)} required autocomplete="off" />
        </label>
        <button type="submit" class="primary" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
        {error ? (
          <div class="error-note" role="alert" data-testid="signin-error">
            <strong>{titleFor(error.status)}</strong> {error.message}
          </div>
        ) : null}
      </form>
    </div>
  );
}

function titleFor(status) {
  if (status === 401) return "Key not accepted.";
  if (status === 403) return "Wrong org for this key.";
  if (status === 404) return "Unknown org.";
  if (status === 0) return "Server unreachable.";
  return "Sign-in failed.";
}
