// Keyward panel: Admins and roles. Owners add admins and change roles; auditors read the list.

import { endpoints, itemsOf } from "./api.js";
import { loadFailure, $, h, can, busy, status, showError } from "./ui.js";

const ROLES = ["owner", "admin", "helpdesk", "auditor"];

function row(admin) {
  const cells = [
    h("th", { scope: "row" }, admin.email),
    h("td", {}, admin.role),
    h("td", {}, admin.disabled ? "disabled" : "active"),
  ];
  if (can("admins.write")) {
    const select = h("select", { "aria-label": `Role of ${admin.email}` },
      ...ROLES.map((r) => h("option", { value: r, selected: r === admin.role }, r)));
    const save = h("button", {
      type: "button",
      onclick: (ev) => busy(ev.currentTarget, async () => {
        try {
          await endpoints.updateAdmin(admin.id, { role: select.value });
          status(`${admin.email} is now ${select.value}.`);
          await load();
        } catch (e) {
          status(`Could not change the role: ${e.message}`, "error");
        }
      }),
    }, "Change role");
    const toggle = h("button", {
      type: "button",
      onclick: (ev) => busy(ev.currentTarget, async () => {
        try {
          await endpoints.updateAdmin(admin.id, { disabled: !admin.disabled });
          await load();
        } catch (e) {
          status(`Could not update ${admin.email}: ${e.message}`, "error");
        }
      }),
    }, admin.disabled ? "Enable" : "Disable");
    cells.push(h("td", { class: "actions" }, select, " ", save, " ", toggle));
  }
  return h("tr", {}, ...cells);
}

async function load() {
  try {
    const admins = itemsOf(await endpoints.admins());
    $("#admins tbody").replaceChildren(...admins.map(row));
  } catch (e) {
    status(...loadFailure("the admins", e));
  }
}

export function init() {
  const form = $("#admin-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("#admin-error", null);
    await busy(form.querySelector("button[type=submit]"), async () => {
      try {
        await endpoints.createAdmin($("#admin-email").value.trim(), $("#admin-role").value, $("#admin-password").value);
        form.reset();
        status("Admin added.");
        await load();
      } catch (e) {
        showError("#admin-error", e);
      }
    });
  });
  load();
}
