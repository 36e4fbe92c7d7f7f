// Keyward panel: sign-in (password, or a passkey where the server offers it) and the first-run
// owner set-up reached through the one-time link that `keyward serve` prints.

import { api, endpoints, setCsrf, csrfFrom } from "./api.js";
import { $, busy, showError, status } from "./ui.js";
import { requestOptions, credentialJson, ceremonyError } from "./webauthn.js";

/** Only same-site paths are followed after sign-in, so `?next=` cannot send an admin elsewhere. */
function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "";
  if (next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") && next !== "/sign-in") return next;
  return "/users";
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
        // With an e-mail address (and organisation) typed in, only that admin's passkey is accepted.
        const scope = {};
        const email = $("#signin-email").value.trim();
        const org = $("#signin-org").value.trim();
        if (email) scope.email = email;
        if (org) scope.org = org;
        const options = await api("POST", "/auth/passkey/begin", scope, { signIn: true });
        const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        const res = await endpoints.passkeyFinish(credentialJson(credential));
        setCsrf(csrfFrom(res));
        location.assign(nextPath());
      } catch (e) {
        showError(
          "#signin-error",
          e.status === 401 ? "This passkey is not registered for an enabled admin here." : ceremonyError(e, "passkey sign-in"),
        );
      }
    }),
  );
}

/**
 * A one-time sign-in link (`keyward admin login-link`, `keyward quickstart`) carries its token in
 * the fragment, which never reaches the server's logs; it is posted once and then removed from the
 * address bar and history.
 */
async function followLink() {
  const token = new URLSearchParams(location.hash.slice(1)).get("link");
  if (!token) return false;
  history.replaceState(null, "", location.pathname + location.search);
  status("Signing you in with the one-time link…");
  try {
    const res = await api("POST", "/auth/link", { token }, { signIn: true });
    setCsrf(csrfFrom(res));
    location.assign(nextPath());
    return true;
  } catch (e) {
    status("", "info");
    showError(
      "#signin-error",
      e.status === 401 ? "This sign-in link was already used or has expired. Sign in with your password or a passkey." : e,
    );
    return false;
  }
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
  followLink();
}

function initSetup() {
  // The link carries its token in the fragment, which browsers never send to a server or a log.
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token") || new URLSearchParams(location.search).get("token") || "";
  const form = $("#setup-form");
  if (!token) {
    showError("#setup-error", "This page needs the one-time set-up link that keyward serve printed.");
  }
  api("GET", "/setup", undefined, { signIn: true })
    .then((state) => {
      if (state && state.needed === false) {
        form.hidden = true;
        $("#setup-done").hidden = false;
      }
    })
    .catch(() => {});
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
