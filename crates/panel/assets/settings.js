// Keyward panel: organisation settings (attestation, AAGUID, PIN policy, delegated sessions).
// Everyone with settings.read sees them; only settings.write (owners) may change them. The server
// checks the same: a PUT by anyone else is refused there.

import { endpoints } from "./api.js";
import { loadFailure, $, $$, can, busy, status, showError, fmtTime } from "./ui.js";

function fill(s) {
  for (const r of $$("input[name=attestation]")) r.checked = r.value === s.attestation;
  for (const r of $$("input[name=pin_policy]")) r.checked = r.value === s.pin_policy;
  $("#settings-aaguid").value = s.aaguid || "";
  $("#settings-min-pin").value = s.min_pin_length ?? "";
  $("#settings-session").value = s.delegated_session_minutes ?? "";
  const ca = $("#settings-ca");
  ca.hidden = !s.attestation_ca_pem;
  $("#settings-ca-pem").textContent = s.attestation_ca_pem || "";
  $("#settings-updated").textContent = s.updated_at
    ? `Last changed ${fmtTime(s.updated_at)}${s.updated_by ? ` by ${s.updated_by}` : ""}.`
    : "Defaults: no one has changed these settings yet.";
}

function read() {
  const checked = (name) => ($(`input[name=${name}]:checked`) || {}).value;
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  return {
    attestation: checked("attestation"),
    aaguid: $("#settings-aaguid").value.trim() || undefined,
    pin_policy: checked("pin_policy"),
    min_pin_length: num("#settings-min-pin"),
    delegated_session_minutes: num("#settings-session"),
  };
}

export async function init() {
  const form = $("#settings-form");
  if (!can("settings.write")) {
    for (const el of $$("input, select, button", form)) el.disabled = true;
    $("#settings-readonly").hidden = false;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("#settings-error", null);
    if (!can("settings.write")) return;
    if (!form.reportValidity()) return;
    await busy(form.querySelector("button[type=submit]"), async () => {
      try {
        const saved = await endpoints.saveSettings(read());
        if (saved) fill(saved);
        status("Settings saved.");
      } catch (e) {
        showError("#settings-error", e);
        status("Settings not saved: " + e.message, "error");
      }
    });
  });
  try {
    fill((await endpoints.settings()) || {});
  } catch (e) {
    status(...loadFailure("settings", e));
  }
}
