// The console is a client of the documented JSON API: every datum comes through here.

let session = null;

/** An API answer that is not 2xx, with the API's own error message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Goes to the login page, coming back to the page open now. */
export function toLogin() {
  const next = `/console/${location.hash}`;
  location.assign(`/console/login?next=${encodeURIComponent(next)}`);
}

/** GET /api/session once: who is logged in and the CSRF token for changes. */
export async function loadSession() {
  try {
    session = await request("GET", "/api/session");
  } catch (error) {
    if (error.status === 401) throw error;
    // An older server without /api/session: the API still works when open.
    session = { authenticated: true, via: "open", user: null, csrf_token: null };
  }
  return session;
}

export function currentSession() {
  return session;
}

/** Sends a request to the API and returns its JSON; throws ApiError with the API's message. */
export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD" && session?.csrf_token) {
    headers["X-CSRF-Token"] = session.csrf_token;
  }
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  // Every change is JSON (the API refuses other media types); `{}` means no options.
  if (method !== "GET" && method !== "HEAD") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "unreachable", "The server did not answer; check that haloflow is running.");
  }
  const answer = await response.json().catch(() => null);
  if (response.ok) return answer;
  if (response.status === 401) {
    toLogin();
  }
  const error = answer?.error;
  throw new ApiError(
    response.status,
    error?.code ?? "http_" + response.status,
    error?.message ?? `${method} ${path} answered ${response.status}`,
  );
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Logs out (the server clears the cookie) and goes to the login page. */
export async function logout() {
  const form = new URLSearchParams();
  await fetch("/console/logout", {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "X-CSRF-Token": session?.csrf_token ?? "",
      "Content-Type": "application/x-www-form-urlencoded",
    },
    body: form,
  }).catch(() => null);
  location.assign("/console/login");
}
