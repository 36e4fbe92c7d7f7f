// Keyward panel: one user's page: profile, key (assign, one-time PIN), passkeys, connecting the
// admin's pairing tool to the key, the activation code, Microsoft manual provisioning (Temporary
// Access Pass) and history.

import { endpoints, itemsOf, ApiError } from "./api.js";
import { $, h, can, busy, status, facts, fmt, fmtTime, badge, showSecret } from "./ui.js";
import { watchJob, initJobRegion, rememberUserNames } from "./jobs.js";
import { confirmNewPin, showPins, closePins } from "./pins.js";

const PAIR_POLL_MS = 5000;
const userId = decodeURIComponent(location.pathname.split("/")[2] || "");
const SESSION_KEY = "keyward.connect." + userId;
let user = null;

async function loadProfile() {
  try {
    user = await endpoints.user(userId);
  } catch (e) {
    status(e instanceof ApiError && e.status === 404 ? "No such user." : `Could not load the user: ${e.message}`, "error");
    return false;
  }
  rememberUserNames([user]);
  document.title = `${user.display_name || user.upn} · Keyward`;
  $("h1").textContent = `User details: ${user.display_name || user.upn || user.id}`;
  facts($("#profile"), [
    ["Name", user.display_name],
    ["UPN", user.upn],
    ["E-mail", user.email],
    ["Status", badge(user.status)],
    ["Source", user.source],
    ["Directory object id", user.external_id],
    ["Keyward id", user.id],
  ]);
  return true;
}

let key = {};

function pinFact(k) {
  if (k.pin_set === undefined) return "—";
  if (!k.pin_set) return "not set";
  return k.force_pin_change ? "one-time PIN: the user must change it at first use" : "set";
}

async function loadKey() {
  const assign = $("#key-assign");
  const setPin = $("#key-pin");
  key = {};
  setPin.hidden = true;
  if (!user.key_id) {
    facts($("#key"), [["Key", "No security key assigned."]]);
    if (can("keys.write")) assign.hidden = false;
    return;
  }
  assign.hidden = true;
  try {
    key = (await endpoints.key(user.key_id)) || {};
  } catch {
    // The key's own endpoint is optional for this page: the id alone is still worth showing.
  }
  // Only an active key takes a new PIN (the server refuses suspended and revoked ones).
  setPin.hidden = !(can("pins") && key.status === "active");
  facts($("#key"), [
    ["Key id", user.key_id],
    ["Status", key.status ? badge(key.status) : "—"],
    ["AAGUID", key.aaguid],
    ["PIN", pinFact(key)],
    ["PIN retries left", key.pin_retries],
    ["Created", fmtTime(key.created_at)],
  ]);
}

async function loadCredentials() {
  try {
    const items = itemsOf(await endpoints.credentials(userId));
    $("#credentials tbody").replaceChildren(
      ...items.map((c) =>
        h("tr", {},
          h("th", { scope: "row" }, c.rp_id),
          h("td", {}, fmt(c.user_name)),
          h("td", {}, fmtTime(c.created_at)),
          h("td", {}, fmt(c.created_by)),
          h("td", {}, fmt(c.via)))),
    );
    $("#credentials-empty").hidden = items.length > 0;
  } catch (e) {
    status(`Could not load passkeys: ${e.message}`, "error");
  }
}

async function loadHistory() {
  if (!can("audit.read")) return;
  try {
    const items = itemsOf(await endpoints.audit({ user_id: userId, limit: 50 }));
    $("#history tbody").replaceChildren(
      ...items.map((a) =>
        h("tr", {},
          h("td", {}, fmtTime(a.at)),
          h("td", {}, fmt(a.actor)),
          h("td", {}, fmt(a.action)),
          h("td", { class: "detail" }, fmt(a.detail)))),
    );
  } catch (e) {
    $("#history tbody").replaceChildren(h("tr", {}, h("td", { colspan: "4" }, `Could not load history: ${e.message}`)));
  }
}

// --- Connect to register passkeys ------------------------------------------------------------

function showSession(session) {
  const connected = Boolean(session && session.expires_at && new Date(session.expires_at) > new Date());
  $("#connect").hidden = connected;
  $("#disconnect").hidden = !connected;
  $("#connect-state").textContent = connected
    ? `Connected: your pairing tool shows this user's key until ${fmtTime(session.expires_at)}. Only registrations are allowed.`
    : "";
  if (connected) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(SESSION_KEY);
}

async function pollPairing() {
  const el = $("#pair-state");
  try {
    // The signed-in admin's registered pairing tools, each with whether it is connected now.
    const devices = itemsOf(await endpoints.pairing());
    const online = devices.filter((d) => d.online);
    if (online.length) {
      el.textContent = `Your pairing tool ${online.map((d) => d.name).join(", ")} is online.`;
    } else if (devices.length) {
      el.textContent = "Your pairing tool is not connected. Start keyward-pair run on your PC.";
    } else {
      el.textContent = "You have no pairing tool yet: run keyward-pair login on your PC.";
    }
    el.dataset.online = String(online.length > 0);
  } catch (e) {
    el.textContent = e instanceof ApiError && e.status === 404
      ? "This server does not report pairing tools."
      : `Could not check your pairing tool: ${e.message}`;
  }
  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  if (saved) showSession(saved);
  setTimeout(pollPairing, PAIR_POLL_MS);
}

function initConnect() {
  if (!can("connect")) return;
  $("#connect").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        showSession(await endpoints.connect(userId));
        status("Connected to the user's key.");
        $("#disconnect").focus();
      } catch (e) {
        status(`Could not connect: ${e.message}`, "error");
      }
    }),
  );
  $("#disconnect").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        await endpoints.disconnect(userId);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) {
          status(`Could not disconnect: ${e.message}`, "error");
          return;
        }
      }
      showSession(null);
      status("Disconnected.");
      $("#connect").focus();
    }),
  );
  pollPairing();
}

// --- Key: assign and one-time PIN --------------------------------------------------------------

function initKey() {
  $("#key-assign").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        const res = await endpoints.assignKey(userId);
        status("Security key assigned.");
        // Under the admin_one_time PIN policy the answer carries the key's PIN, this once.
        if (res && res.one_time_pin) showPins([{ user, pin: res.one_time_pin }]);
        await refresh();
      } catch (e) {
        status(`Could not assign a key: ${e.message}`, "error");
      }
    }),
  );
  if (!can("pins")) return;
  $("#key-pin").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      if (!(await confirmNewPin(user))) return;
      try {
        const res = await endpoints.setOneTimePin(user.key_id);
        showPins([{ user, pin: res.one_time_pin }]);
        status("A one-time PIN was set on the key.");
      } catch (e) {
        closePins();
        status(`Could not set a one-time PIN: ${e.message}`, "error");
      }
      await refresh();
    }),
  );
}

// --- Activation code and manual provisioning ---------------------------------------------------

function initActivation() {
  if (!can("activation")) return;
  $("#activation-create").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        const res = await endpoints.activation(userId);
        showSecret($("#activation-output"), "Activation code", res.code, [
          res.expires_at ? `Valid until ${fmtTime(res.expires_at)}.` : "",
          `The user runs: keyward-pair activate --server ${location.origin} --code <this code>`,
        ].filter(Boolean));
      } catch (e) {
        status(`Could not create an activation code: ${e.message}`, "error");
      }
    }),
  );
}

function initManual() {
  if (!can("provisioning")) return;
  $("#manual-start").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      try {
        // The pass is created by a job item; the job region offers to show it once it exists.
        const res = await endpoints.provision([userId], "manual", false);
        watchJob(res.job_id, "Microsoft manual provisioning", refresh);
      } catch (e) {
        status(`Could not start manual provisioning: ${e.message}`, "error");
      }
    }),
  );
}

async function refresh() {
  if (await loadProfile()) await Promise.all([loadKey(), loadCredentials(), loadHistory()]);
}

export async function init() {
  initJobRegion(refresh);
  initKey();
  initConnect();
  initActivation();
  initManual();
  await refresh();
}
