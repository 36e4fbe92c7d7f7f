// Keyward panel: the entry module. It finds out who is signed in (GET /api/v1/me), hides what the
// role may not do, and starts the module of the current page (<body data-page>).

import { endpoints, setCsrf, csrfFrom, toSignIn, ApiError } from "./api.js";
import { $, $$, setRole, can, applyPermissions, status } from "./ui.js";

const MODULES = {
  signin: "./signin.js",
  setup: "./signin.js",
  users: "./users.js",
  user: "./user.js",
  directories: "./directories.js",
  admins: "./admins.js",
  audit: "./audit.js",
  settings: "./settings.js",
  account: "./account.js",
};

/** Which permission a page needs to be useful at all. */
const PAGE_NEEDS = {
  users: "users.read",
  user: "users.read",
  directories: "directories.read",
  admins: "admins.read",
  audit: "audit.read",
  settings: "settings.read",
};

function adminOf(me) {
  // Accept {email, role, …} or {admin: {email, role}, organisation: {...}}.
  const admin = (me && me.admin) || me || {};
  const org = (me && (me.organisation || me.org)) || {};
  return {
    email: admin.email || "",
    role: admin.role || "",
    org: typeof org === "string" ? org : org.name || me.org_name || "",
  };
}

async function start() {
  const page = document.body.dataset.page;
  const module = MODULES[page];
  if (document.body.hasAttribute("data-public")) {
    if (module) (await import(module)).init();
    return;
  }
  let me;
  try {
    me = await endpoints.me();
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) status(`Could not load your account: ${e.message}`, "error");
    if (e instanceof ApiError && e.status === 401) toSignIn();
    return;
  }
  const token = csrfFrom(me);
  if (token) setCsrf(token);
  const admin = adminOf(me);
  setRole(admin.role);
  $("#whoami").textContent = admin.org
    ? `${admin.email} (${admin.role}, ${admin.org})`
    : `${admin.email} (${admin.role})`;
  for (const link of $$("[data-nav]")) {
    const here = location.pathname === link.dataset.nav || location.pathname.startsWith(link.dataset.nav + "/");
    if (here) link.setAttribute("aria-current", "page");
  }
  applyPermissions();
  $("#sign-out").addEventListener("click", async () => {
    try {
      await endpoints.logout();
    } catch {
      // Signing out locally is what matters to the person at the keyboard.
    }
    setCsrf("");
    location.assign("/sign-in");
  });
  const needs = PAGE_NEEDS[page];
  if (needs && !can(needs)) {
    status("Your role does not allow this page.", "error");
    for (const el of $$("#main > :not(h1):not(#page-status)")) el.hidden = true;
    return;
  }
  if (module) (await import(module)).init(admin);
}

start().catch((e) => status(`The panel failed to start: ${e.message}`, "error"));
