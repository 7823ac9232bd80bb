// The console's only way to the server: the public management API, with the signed-in key.
// Errors carry Turnout's flat body ({message, type, param, code}, DESIGN §4).

export const BASE = "/management/v1";

export class ApiError extends Error {
  constructor(status, body, fallback) {
    super(body?.message || fallback);
    this.status = status;
    this.type = body?.type ?? null;
    this.code = body?.code ?? null;
    this.param = body?.param ?? null;
  }
}

async function readBody(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { message: text.slice(0, 300) };
  }
}

export function createApi(key, { onUnauthenticated } = {}) {
  async function call(method, path, body) {
    const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(BASE + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, null, `cannot reach the Turnout API (${err.message}); is the server up?`);
    }
    const parsed = await readBody(resp);
    if (!resp.ok) {
      const error = new ApiError(resp.status, parsed, `${method} ${path} answered HTTP ${resp.status}`);
      if (resp.status === 401 && onUnauthenticated) onUnauthenticated(error);
      throw error;
    }
    return parsed;
  }
  return {
    get: (path) => call("GET", path),
    post: (path, body) => call("POST", path, body ?? {}),
    patch: (path, body) => call("PATCH", path, body),
  };
}

export const enc = encodeURIComponent;
