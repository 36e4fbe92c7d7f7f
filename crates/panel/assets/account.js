// Keyward panel: "My account" — the signed-in admin's own passkeys: register, list, rename, delete.
// Every role may do this: it concerns only their own sign-in.

import { api, itemsOf } from "./api.js";
import { $, h, busy, showError, status, fmtTime } from "./ui.js";
import { creationOptions, credentialJson, ceremonyError } from "./webauthn.js";

async function load() {
  let items;
  try {
    items = itemsOf(await api("GET", "/account/passkeys"));
  } catch (e) {
    status(`Could not load your passkeys: ${e.message}`, "error");
    return;
  }
  const body = $("#passkeys tbody");
  body.replaceChildren(
    ...items.map((pk) =>
      h(
        "tr",
        { dataset: { id: pk.id } },
        h("td", {}, pk.name),
        h("td", {}, fmtTime(pk.created_at)),
        h("td", {}, fmtTime(pk.last_used_at)),
        h(
          "td",
          {},
          h("button", { type: "button", "aria-label": `Rename passkey ${pk.name}`, onclick: (ev) => rename(ev.currentTarget, pk) }, "Rename"),
          " ",
          h("button", { type: "button", "aria-label": `Delete passkey ${pk.name}`, onclick: (ev) => remove(ev.currentTarget, pk) }, "Delete"),
        ),
      ),
    ),
  );
  $("#passkeys-empty").hidden = items.length > 0;
  $("#passkeys").setAttribute("aria-busy", "false");
}

async function rename(button, pk) {
  const name = window.prompt("New name of the passkey", pk.name);
  if (!name || name.trim() === pk.name) return;
  await busy(button, async () => {
    try {
      await api("PATCH", `/account/passkeys/${encodeURIComponent(pk.id)}`, { name: name.trim() });
      status(`Passkey renamed to ${name.trim()}.`);
      await load();
    } catch (e) {
      status(`Could not rename the passkey: ${e.message}`, "error");
    }
  });
}

async function remove(button, pk) {
  await busy(button, async () => {
    try {
      await api("DELETE", `/account/passkeys/${encodeURIComponent(pk.id)}`);
      status(`Passkey ${pk.name} deleted. Remove it from your authenticator too.`);
      await load();
      $("#passkey-name").focus();
    } catch (e) {
      status(`Could not delete the passkey: ${e.message}`, "error");
    }
  });
}

async function register(form) {
  showError("#passkey-error", null);
  if (!window.PublicKeyCredential) {
    showError("#passkey-error", "This browser does not support passkeys.");
    return;
  }
  await busy(form.querySelector("button[type=submit]"), async () => {
    try {
      const options = await api("POST", "/account/passkeys/begin", {});
      const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
      const name = $("#passkey-name").value.trim();
      const saved = await api("POST", "/account/passkeys", { name: name || null, credential: credentialJson(credential) });
      $("#passkey-name").value = "";
      status(`Passkey ${saved.name} registered. You can now sign in with it.`);
      await load();
    } catch (e) {
      showError("#passkey-error", ceremonyError(e, "passkey registration"));
    }
  });
}

export function init() {
  const form = $("#passkey-form");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    register(form);
  });
  load();
}
