// Keyward panel: sign-in (password, or a passkey where the server offers it) and the first-run
// owner set-up reached through the one-time link that `keyward serve` prints.

import { api, endpoints, setCsrf, csrfFrom } from "./api.js";
import { $, busy, showError } from "./ui.js";

/** Only same-site paths are followed after sign-in, so `?next=` cannot send an admin elsewhere. */
function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "";
  if (next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") && next !== "/sign-in") return next;
  return "/users";
}

function b64urlToBytes(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function bytesToB64url(buf) {
  const bytes = new Uint8Array(buf);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function requestOptions(json) {
  const pk = json.publicKey || json;
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    return PublicKeyCredential.parseRequestOptionsFromJSON(pk);
  }
  return {
    ...pk,
    challenge: b64urlToBytes(pk.challenge),
    allowCredentials: (pk.allowCredentials || []).map((c) => ({ ...c, id: b64urlToBytes(c.id) })),
  };
}

function credentialJson(cred) {
  if (typeof cred.toJSON === "function") return cred.toJSON();
  const r = cred.response;
  return {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    response: {
      clientDataJSON: bytesToB64url(r.clientDataJSON),
      authenticatorData: bytesToB64url(r.authenticatorData),
      signature: bytesToB64url(r.signature),
      userHandle: r.userHandle ? bytesToB64url(r.userHandle) : null,
    },
    clientExtensionResults: cred.getClientExtensionResults(),
  };
}

/** Shows the passkey button only if the server's OpenAPI document lists a passkey sign-in. */
async function offerPasskey() {
  if (!window.PublicKeyCredential) return;
  try {
    const doc = await api("GET", "/openapi.json", undefined, { signIn: true });
    const paths = Object.keys((doc && doc.paths) || {});
    if (!paths.some((p) => p.endsWith("/auth/passkey/begin"))) return;
  } catch {
    return;
  }
  $("#passkey-signin").hidden = false;
  $("#passkey-button").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      showError("#signin-error", null);
      try {
        const options = await endpoints.passkeyBegin();
        const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        const res = await endpoints.passkeyFinish(credentialJson(credential));
        setCsrf(csrfFrom(res));
        location.assign(nextPath());
      } catch (e) {
        showError("#signin-error", e.name === "NotAllowedError" ? "The passkey sign-in was cancelled." : e);
      }
    }),
  );
}

function initSignIn() {
  const form = $("#signin-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    await busy(button, async () => {
      showError("#signin-error", null);
      try {
        const res = await endpoints.login($("#signin-email").value.trim(), $("#signin-password").value, $("#signin-org").value.trim());
        setCsrf(csrfFrom(res));
        location.assign(nextPath());
      } catch (e) {
        $("#signin-password").value = "";
        showError("#signin-error", e.status === 401 || e.status === 403 ? "Wrong e-mail address or password." : e);
        $("#signin-password").focus();
      }
    });
  });
  $("#signin-email").focus();
  offerPasskey();
}

function initSetup() {
  // The link carries its token in the fragment, which browsers never send to a server or a log.
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token") || new URLSearchParams(location.search).get("token") || "";
  const form = $("#setup-form");
  if (!token) {
    showError("#setup-error", "This page needs the one-time set-up link that keyward serve printed.");
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("#setup-error", null);
    if ($("#setup-password").value !== $("#setup-confirm").value) {
      showError("#setup-error", "The two passwords differ.");
      $("#setup-confirm").focus();
      return;
    }
    await busy(form.querySelector("button[type=submit]"), async () => {
      try {
        const res = await endpoints.setup(token, $("#setup-org").value.trim(), $("#setup-email").value.trim(), $("#setup-password").value);
        setCsrf(csrfFrom(res));
        history.replaceState(null, "", "/setup");
        location.assign(csrfFrom(res) ? "/users" : "/sign-in");
      } catch (e) {
        showError("#setup-error", e);
      }
    });
  });
}

export function init() {
  if (document.body.dataset.page === "setup") initSetup();
  else initSignIn();
}
