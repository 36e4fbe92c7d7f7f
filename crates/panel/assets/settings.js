// Keyward panel: organisation settings (attestation, AAGUID, PIN policy, delegated sessions).
// Everyone with settings.read sees them; only settings.write may change them.

import { endpoints } from "./api.js";
import { loadFailure, $, $$, can, busy, status, showError } from "./ui.js";

function fill(s) {
  for (const r of $$("input[name=attestation]")) r.checked = r.value === s.attestation;
  for (const r of $$("input[name=pin_policy]")) r.checked = r.value === s.pin_policy;
  $("#settings-aaguid").value = s.aaguid || "";
  $("#settings-min-pin").value = s.min_pin_length ?? "";
  $("#settings-session").value = s.delegated_session_minutes ?? "";
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
    for (const el of $$("input, select", form)) el.disabled = true;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("#settings-error", null);
    if (!form.reportValidity()) return;
    await busy(form.querySelector("button[type=submit]"), async () => {
      try {
        const saved = await endpoints.saveSettings(read());
        if (saved) fill(saved);
        status("Settings saved.");
      } catch (e) {
        showError("#settings-error", e);
      }
    });
  });
  try {
    fill((await endpoints.settings()) || {});
  } catch (e) {
    status(...loadFailure("settings", e));
  }
}
