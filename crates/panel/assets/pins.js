// Keyward panel: one-time PINs. The server returns a one-time PIN once (assigning a key under the
// admin_one_time PIN policy, or "Set one-time PIN" on a user's page); this dialog shows it with a
// copy button and, for several users, a CSV download. The PINs live only in the dialog: closing it
// forgets them, and they are never written to storage or the console.

import { $, h, status } from "./ui.js";

let shown = []; // [{user, pin}] while the dialog is open
let answer = null; // resolves the pending confirmation

const nameOf = (user) => (user && (user.display_name || user.upn || user.email || user.id)) || "";

function csvField(value) {
  const s = String(value ?? "");
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** The shown PINs as CSV: one line per user. */
function csv() {
  const lines = [["upn", "display_name", "user_id", "one_time_pin"]];
  for (const { user, pin } of shown) lines.push([user.upn, user.display_name, user.id, pin]);
  return lines.map((l) => l.map(csvField).join(",")).join("\r\n") + "\r\n";
}

function forget() {
  shown = [];
  $("#pin-list").replaceChildren();
  $("#pin-result").hidden = true;
  $("#pin-confirm").hidden = true;
  if (answer) {
    answer(false);
    answer = null;
  }
}

let ready = false;

function init() {
  if (ready) return;
  ready = true;
  const dialog = $("#pin-dialog");
  // "close" comes a moment after the dialog closes (and also after Escape); the buttons forget at
  // once, so no PIN outlives the click.
  const close = () => {
    forget();
    dialog.close();
  };
  dialog.addEventListener("close", forget);
  $("#pin-close").addEventListener("click", close);
  $("#pin-cancel").addEventListener("click", close);
  $("#pin-set").addEventListener("click", () => {
    if (answer) {
      answer(true);
      answer = null;
    }
  });
  $("#pin-copy").addEventListener("click", async () => {
    const text = shown.length === 1 ? shown[0].pin : csv();
    try {
      await navigator.clipboard.writeText(text);
      status(shown.length === 1 ? "One-time PIN copied." : `${shown.length} one-time PINs copied as CSV.`);
    } catch {
      status("Copying is not allowed here: select the PIN and copy it by hand.", "error");
    }
  });
  $("#pin-download").addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv" }));
    const link = h("a", { href: url, download: "keyward-one-time-pins.csv", hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
}

/**
 * Asks in the dialog whether to set a new one-time PIN; resolves true when the admin confirms.
 * The dialog stays open, so the PIN can follow with `showPins`.
 */
export function confirmNewPin(user) {
  init();
  forget();
  $("#pin-title").textContent = "Set a one-time PIN";
  $("#pin-confirm-text").textContent =
    `Set a new one-time PIN on the security key of ${nameOf(user)}? Their current PIN stops working at once; ` +
    "their passkeys stay. They must change the new PIN the first time they use the key.";
  $("#pin-confirm").hidden = false;
  const dialog = $("#pin-dialog");
  if (!dialog.open) dialog.showModal();
  $("#pin-set").focus();
  return new Promise((resolve) => {
    answer = resolve;
  });
}

export function closePins() {
  const dialog = $("#pin-dialog");
  if (dialog.open) dialog.close();
}

/** Shows one-time PINs once: `entries` is [{user, pin}]. */
export function showPins(entries) {
  init();
  if (!entries.length) return;
  forget();
  shown = entries;
  const list = $("#pin-list");
  if (entries.length === 1) {
    $("#pin-title").textContent = "One-time PIN";
    list.replaceChildren(
      h("p", { class: "secret-label" }, `One-time PIN for ${nameOf(entries[0].user)}`),
      h("p", {}, h("output", { class: "secret-value", "aria-label": "One-time PIN" }, entries[0].pin)),
    );
  } else {
    $("#pin-title").textContent = `One-time PINs for ${entries.length} users`;
    list.replaceChildren(
      h("table", { id: "pin-table" },
        h("caption", { class: "visually-hidden" }, "One-time PIN per user"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "User"), h("th", { scope: "col" }, "One-time PIN"))),
        h("tbody", {}, ...entries.map(({ user, pin }) =>
          h("tr", {},
            h("th", { scope: "row" }, nameOf(user)),
            h("td", {}, h("output", { class: "secret-value" }, pin)))))),
    );
  }
  $("#pin-download").hidden = entries.length < 2;
  $("#pin-result").hidden = false;
  const dialog = $("#pin-dialog");
  if (!dialog.open) dialog.showModal();
  $("#pin-copy").focus();
}
