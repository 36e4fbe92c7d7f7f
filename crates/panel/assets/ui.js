// Keyward panel: DOM helpers, role permissions and small formatting utilities.
// Data from the API is only ever placed with textContent / attributes, never as HTML, so a user's
// display name cannot inject markup into an admin's page.

/** Creates an element: h("td", {class: "x"}, "text", childNode, …). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** What each role may do in the panel. The server enforces the same rules on its own. */
const ROLE_PERMISSIONS = {
  owner: [
    "users.read", "users.write", "keys.write", "bulk", "provisioning", "connect", "activation", "pins",
    "directories.read", "directories.write", "directories.import", "admins.read", "admins.write",
    "audit.read", "settings.read", "settings.write", "jobs.read",
  ],
  admin: [
    "users.read", "users.write", "keys.write", "bulk", "provisioning", "connect", "activation", "pins",
    "directories.read", "directories.import", "audit.read", "jobs.read",
  ],
  helpdesk: ["users.read", "connect", "activation", "pins", "jobs.read"],
  auditor: [
    "users.read", "directories.read", "admins.read", "audit.read", "settings.read", "jobs.read",
  ],
};

let current = { role: "", perms: new Set() };

export function setRole(role) {
  current = { role, perms: new Set(ROLE_PERMISSIONS[role] || []) };
  document.body.dataset.role = role || "";
}

export function can(perm) {
  return current.perms.has(perm);
}

/** Removes from view every element whose `data-requires` the role lacks. */
export function applyPermissions(root = document) {
  for (const el of $$("[data-requires]", root)) {
    if (!can(el.dataset.requires)) {
      el.hidden = true;
      el.classList.add("forbidden");
      if ("disabled" in el) el.disabled = true;
    }
  }
}

/** Announces a message in the page's live status region. */
export function status(message, kind = "info") {
  const el = $("#page-status");
  if (!el) return;
  el.textContent = message || "";
  el.dataset.kind = kind;
}

export function showError(target, error) {
  const el = typeof target === "string" ? $(target) : target;
  const text = error ? (error.message || String(error)) : "";
  if (el) el.textContent = text;
  else status(text, "error");
}

/**
 * The status line for a failed load. A 404 on a list means this server has no such endpoint (an
 * older or partial installation), which is not an error of the admin's.
 */
export function loadFailure(what, error) {
  if (error && error.status === 404) return [`This server does not offer ${what} yet.`, "info"];
  return [`Could not load ${what}: ${error.message}`, "error"];
}

export function fmtTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function fmt(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** Fills a <dl> with term/description pairs. */
export function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    dl.append(h("dt", {}, term), h("dd", {}, value instanceof Node ? value : fmt(value)));
  }
}

export function badge(text) {
  return h("span", { class: `badge badge-${String(text || "none").replace(/[^a-z_-]/gi, "")}` }, fmt(text));
}

/** Disables a button while `work` runs, so a double click cannot send twice. */
export async function busy(button, work) {
  const was = button.disabled;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = was;
    button.removeAttribute("aria-busy");
  }
}

/**
 * Shows a secret (activation code, Temporary Access Pass) once, in a region that holds nothing
 * else. It is never written to storage or the console; leaving the page forgets it.
 */
export function showSecret(container, label, value, lines = []) {
  container.replaceChildren(
    h("p", { class: "secret-label" }, label),
    h("p", {}, h("output", { class: "secret-value", "aria-label": label }, value)),
    ...lines.map((l) => h("p", { class: "hint" }, l)),
    h("p", { class: "hint" }, "Shown once: note it now. It cannot be displayed again."),
  );
  container.hidden = false;
}
