import { useMemo, useState } from "preact/hooks";
import { createApi } from "./api.js";
import { EndpointPage } from "./pages/endpoint.jsx";
import { EndpointsPage } from "./pages/endpoints.jsx";
import { ModelsPage } from "./pages/models.jsx";
import { RolloutPage } from "./pages/rollout.jsx";
import { SignIn } from "./pages/signin.jsx";
import { useRoute } from "./route.js";
import { clearSession, loadSession, saveSession } from "./session.js";

export function App() {
  const [session, setSession] = useState(loadSession);
  const [signedOutBecause, setSignedOutBecause] = useState(null);
  const route = useRoute();

  const api = useMemo(
    () =>
      session &&
      createApi(session.key, {
        // A key revoked while signed in: back to the sign-in form, saying why.
        onUnauthenticated: (err) => {
          clearSession();
          setSignedOutBecause(err);
          setSession(null);
        },
      }),
    [session],
  );

  if (!session) {
    return (
      <SignIn
        reason={signedOutBecause}
        onSignedIn={(s) => {
          saveSession(s);
          setSignedOutBecause(null);
          setSession(s);
        }}
      />
    );
  }

  const signOut = () => {
    clearSession();
    setSession(null);
  };
  const props = { api, org: session.org };
  return (
    <div class="shell">
      <header class="topbar">
        <a class="brand" href="#/endpoints">Turnout</a>
        <nav>
          <a href="#/endpoints" class={route.page === "endpoints" || route.page === "endpoint" ? "active" : ""}>Endpoints</a>
          <a href="#/models" class={route.page === "models" ? "active" : ""}>Models</a>
        </nav>
        <span class="who">
          org <strong data-testid="org-name">{session.org}</strong>
          <button type="button" class="link" onClick={signOut}>Sign out</button>
        </span>
      </header>
      <main>
        {route.page === "endpoints" && <EndpointsPage {...props} />}
        {route.page === "endpoint" && <EndpointPage {...props} endpointId={route.id} />}
        {route.page === "rollout" && <RolloutPage {...props} deploymentId={route.id} />}
        {route.page === "models" && <ModelsPage {...props} />}
      </main>
    </div>
  );
}
