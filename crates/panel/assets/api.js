// Keyward panel: the REST API client. Every request of the panel goes through `api()`, so the
// session cookie, the CSRF header on unsafe methods and the problem+json errors are handled in
// one place. The CSRF token comes from the sign-in answer (or /auth/me when the server sends it) and
// lives in localStorage: readable by this origin's script only, shared by the tabs of the session
// (the cookie outlives a tab too), and removed at sign-out. It is useless without the HttpOnly
// session cookie, which script cannot read.

const BASE = "/api/v1";
const CSRF_KEY = "keyward.csrf";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || null;
    this.type = (problem && problem.type) || "";
  }
}

export function setCsrf(token) {
  if (token) localStorage.setItem(CSRF_KEY, token);
  else localStorage.removeItem(CSRF_KEY);
}

function csrf() {
  return localStorage.getItem(CSRF_KEY) || "";
}

// The CSRF token may come under either name; the server's login answer decides.
export function csrfFrom(body) {
  if (!body || typeof body !== "object") return "";
  return body.csrf_token || body.csrf || (body.session && body.session.csrf_token) || "";
}

/**
 * Calls the API. `body` is sent as JSON unless it is a string (then `contentType` applies).
 * Resolves to the parsed JSON (or null for an empty answer); rejects with ApiError.
 * A 401 on anything but the sign-in call sends the browser to the sign-in page.
 */
export async function api(method, path, body, { contentType, signIn = false } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const unsafe = !["GET", "HEAD", "OPTIONS"].includes(method);
  if (unsafe && csrf()) headers["X-CSRF-Token"] = csrf();
  let payload;
  if (body !== undefined) {
    if (typeof body === "string") {
      payload = body;
      headers["Content-Type"] = contentType || "text/plain";
    } else {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, { title: "Network error", detail: "The Keyward server could not be reached." });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401 && !signIn) {
    toSignIn();
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function toSignIn() {
  const next = location.pathname + location.search;
  if (location.pathname !== "/sign-in") {
    location.assign("/sign-in?next=" + encodeURIComponent(next));
  }
}

/** Builds `?a=1&b=2`, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

const enc = encodeURIComponent;

// The endpoints the panel uses. Shapes marked "design.md" are fixed; the others are the server's
// own and are tolerated loosely by the pages.
export const endpoints = {
  login: (email, password, org) =>
    api("POST", "/auth/login", org ? { org, email, password } : { email, password }, { signIn: true }),
  logout: () => api("POST", "/auth/logout"),
  me: () => api("GET", "/auth/me"),
  setup: (token, org, email, password) =>
    api("POST", "/setup", { token, org, email, password }, { signIn: true }),
  passkeyBegin: () => api("POST", "/auth/passkey/begin", {}, { signIn: true }),
  passkeyFinish: (credential) => api("POST", "/auth/passkey/finish", credential, { signIn: true }),

  // design.md
  users: (params) => api("GET", "/users" + query(params)),
  user: (id) => api("GET", `/users/${enc(id)}`),
  assignKey: (id) => api("POST", `/users/${enc(id)}/key`, {}),
  disableUser: (id) => api("POST", `/users/${enc(id)}/disable`, {}),
  key: (keyId) => api("GET", `/keys/${enc(keyId)}`),
  setOneTimePin: (keyId) => api("POST", `/keys/${enc(keyId)}/pin`, {}),
  credentials: (id) => api("GET", `/users/${enc(id)}/credentials`),
  connect: (id) => api("POST", `/users/${enc(id)}/connect`, {}),
  disconnect: (id) => api("DELETE", `/users/${enc(id)}/connect`),
  activation: (id) => api("POST", `/users/${enc(id)}/activation`, {}),
  pairing: () => api("GET", "/pair/devices"),
  provision: (userIds, mode, assignMissingKeys) =>
    api("POST", "/provisioning", {
      rp: "microsoft",
      mode,
      user_ids: userIds,
      assign_missing_keys: assignMissingKeys,
    }),
  job: (id) => api("GET", `/jobs/${enc(id)}`),
  revealTap: (jobId, userId) => api("POST", `/jobs/${enc(jobId)}/items/${enc(userId)}/tap`, {}),
  retryJob: (id) => api("POST", `/jobs/${enc(id)}/retry`, {}),
  cancelJob: (id) => api("POST", `/jobs/${enc(id)}/cancel`, {}),
  jobEventsUrl: (id) => `${BASE}/jobs/${enc(id)}/events`,
  audit: (params) => api("GET", "/audit" + query(params)),
  directories: () => api("GET", "/directories"),
  createEntra: (form) => api("POST", "/directories/entra", form),
  testDirectory: (id) => api("POST", `/directories/${enc(id)}/test`, {}),
  importDirectory: (id) => api("POST", `/directories/${enc(id)}/import`, {}),

  admins: () => api("GET", "/admins"),
  createAdmin: (email, role, password) => api("POST", "/admins", { email, role, password }),
  updateAdmin: (id, change) => api("PATCH", `/admins/${enc(id)}`, change),
  settings: () => api("GET", "/settings"),
  saveSettings: (settings) => api("PUT", "/settings", settings),
};

/** Lists of the API come as `{items, next_cursor}`; some early endpoints answer a bare array. */
export function itemsOf(data) {
  if (Array.isArray(data)) return data;
  return (data && Array.isArray(data.items) && data.items) || [];
}
