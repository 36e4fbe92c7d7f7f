// Keyward panel: Security Key Management → Users. Search, filters and cursor paging come from
// GET /users; the action bar works on the selected rows; provisioning runs as a job whose progress
// shows at the top of the page.

import { endpoints, itemsOf } from "./api.js";
import { $, $$, h, can, busy, status, badge, showError } from "./ui.js";
import { watchJob, initJobRegion, rememberUserNames } from "./jobs.js";
import { showPins } from "./pins.js";

const PAGE_SIZE = 25;

const state = {
  filters: { q: "", status: "", source: "" },
  cursors: [""], // cursors[i] fetches page i; "" is the first page
  page: 0,
  next: "",
  rows: [],
  selected: new Map(), // id → user, kept across pages
};

function readFilters() {
  const p = new URLSearchParams(location.search);
  state.filters = { q: p.get("q") || "", status: p.get("status") || "", source: p.get("source") || "" };
  $("#filter-q").value = state.filters.q;
  $("#filter-status").value = state.filters.status;
  $("#filter-source").value = state.filters.source;
}

function writeFilters() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) if (v) p.set(k, v);
  const s = p.toString();
  history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
}

function updateSelection() {
  const n = state.selected.size;
  $("#selected-count").textContent = `${n} selected`;
  for (const id of ["#action-assign", "#action-provision", "#action-disable"]) {
    const b = $(id);
    if (!b.classList.contains("forbidden")) b.disabled = n === 0;
  }
  const boxes = $$("#users-table tbody input[type=checkbox]");
  const all = $("#select-all");
  const checked = boxes.filter((b) => b.checked).length;
  all.checked = boxes.length > 0 && checked === boxes.length;
  all.indeterminate = checked > 0 && checked < boxes.length;
}

function row(user) {
  const name = user.display_name || user.upn || user.email || user.id;
  const cells = [];
  if (can("bulk")) {
    const box = h("input", {
      type: "checkbox",
      "aria-label": `Select ${name}`,
      dataset: { id: user.id },
    });
    box.checked = state.selected.has(user.id);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.set(user.id, user);
      else state.selected.delete(user.id);
      updateSelection();
    });
    cells.push(h("td", {}, box));
  }
  cells.push(
    h("th", { scope: "row" }, h("a", { href: `/users/${encodeURIComponent(user.id)}` }, name)),
    h("td", {}, user.upn || "—"),
    h("td", {}, user.email || "—"),
    h("td", {}, badge(user.status)),
    h("td", {}, user.source || "—"),
    h("td", {}, user.key_id ? "Assigned" : "None"),
  );
  return h("tr", { dataset: { id: user.id, status: user.status || "" } }, ...cells);
}

// Search, status and source are all filtered by the server (GET /users?q=&status=&source=), so
// cursor paging stays exact whatever the filters.
async function fetchPage() {
  return endpoints.users({ ...state.filters, limit: PAGE_SIZE, cursor: state.cursors[state.page] });
}

/** Loads the current page; `announce: false` keeps the status line of an action just finished. */
async function load({ announce = true } = {}) {
  if (announce) status("Loading users…");
  try {
    const data = await fetchPage();
    state.rows = itemsOf(data);
    state.next = (data && data.next_cursor) || "";
    rememberUserNames(state.rows);
    $("#users-table tbody").replaceChildren(...state.rows.map(row));
    $("#users-empty").hidden = state.rows.length > 0;
    $("#page-number").textContent = `Page ${state.page + 1}`;
    $("#page-prev").disabled = state.page === 0;
    $("#page-next").disabled = !state.next;
    if (announce) status(`${state.rows.length} user${state.rows.length === 1 ? "" : "s"} on this page.`);
  } catch (e) {
    status(`Could not load users: ${e.message}`, "error");
  }
  updateSelection();
}

function restart() {
  state.cursors = [""];
  state.page = 0;
  writeFilters();
  return load();
}

/** Runs `action` for each selected user in turn, announcing progress; returns the failures. */
async function forEachSelected(verb, action) {
  const users = Array.from(state.selected.values());
  const failures = [];
  let n = 0;
  for (const u of users) {
    n += 1;
    status(`${verb}: ${n} of ${users.length}…`);
    try {
      await action(u);
    } catch (e) {
      failures.push(`${u.upn || u.id}: ${e.message}`);
    }
  }
  const ok = users.length - failures.length;
  status(
    failures.length
      ? `${verb}: ${ok} done, ${failures.length} failed. ${failures.join("; ")}`
      : `${verb}: ${ok} done.`,
    failures.length ? "error" : "info",
  );
  return failures;
}

function initActions() {
  $("#action-assign").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      // Under the admin_one_time PIN policy each new key comes with its one-time PIN, returned
      // once: they are collected here and shown together (copy or CSV download).
      const pins = [];
      const failures = await forEachSelected("Assigning keys", async (u) => {
        if (u.key_id) return;
        const res = await endpoints.assignKey(u.id);
        if (res && res.one_time_pin) pins.push({ user: u, pin: res.one_time_pin });
      });
      if (failures.length === 0) state.selected.clear();
      await load({ announce: false });
      showPins(pins);
    }),
  );
  $("#action-disable").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      const n = state.selected.size;
      if (!window.confirm(`Disable ${n} user${n === 1 ? "" : "s"}? Their keys stop working.`)) return;
      const failures = await forEachSelected("Disabling users", (u) => endpoints.disableUser(u.id));
      if (failures.length === 0) state.selected.clear();
      await load({ announce: false });
    }),
  );
  const dialog = $("#provision-dialog");
  $("#action-provision").addEventListener("click", () => {
    const n = state.selected.size;
    $("#provision-summary").textContent = `${n} user${n === 1 ? "" : "s"} selected.`;
    showError("#provision-error", null);
    dialog.showModal();
  });
  $("#provision-cancel").addEventListener("click", () => dialog.close());
  $("#provision-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const manual = $("#provision-manual").checked;
    await busy($("#provision-submit"), async () => {
      try {
        const res = await endpoints.provision(
          Array.from(state.selected.keys()),
          manual ? "manual" : "automated",
          $("#provision-assign").checked,
        );
        dialog.close();
        state.selected.clear();
        updateSelection();
        for (const b of $$("#users-table tbody input[type=checkbox]")) b.checked = false;
        watchJob(res.job_id, manual ? "Microsoft manual provisioning" : "Microsoft automated provisioning", () => load());
        $("#job").focus?.();
      } catch (e) {
        showError("#provision-error", e);
      }
    });
  });
}

export function init() {
  readFilters();
  initJobRegion(() => load());
  $("#user-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = {
      q: $("#filter-q").value.trim(),
      status: $("#filter-status").value,
      source: $("#filter-source").value,
    };
    restart();
  });
  for (const id of ["#filter-status", "#filter-source"]) {
    $(id).addEventListener("change", () => $("#user-filters").requestSubmit());
  }
  $("#select-all").addEventListener("change", (ev) => {
    for (const box of $$("#users-table tbody input[type=checkbox]")) {
      box.checked = ev.currentTarget.checked;
      const user = state.rows.find((u) => u.id === box.dataset.id);
      if (box.checked && user) state.selected.set(user.id, user);
      else state.selected.delete(box.dataset.id);
    }
    updateSelection();
  });
  $("#page-next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    load();
  });
  $("#page-prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    load();
  });
  initActions();
  load();
}
