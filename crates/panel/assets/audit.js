// Keyward panel: the audit log, filterable and paged by cursor, exported as CSV in the browser
// (every page the filters select, up to a cap, so an export cannot run away).

import { endpoints, itemsOf } from "./api.js";
import { $, h, busy, status, fmt, fmtTime } from "./ui.js";

const PAGE_SIZE = 50;
const EXPORT_CAP = 100000;
const state = { filters: {}, cursors: [""], page: 0, next: "" };

function readForm() {
  const since = $("#audit-since").value;
  return {
    actor: $("#audit-actor").value.trim(),
    user_id: $("#audit-user").value.trim(),
    action: $("#audit-action").value.trim(),
    since: since ? new Date(since).toISOString() : "",
  };
}

function row(a) {
  return h("tr", {},
    h("td", {}, fmt(a.seq)),
    h("td", {}, fmtTime(a.at)),
    h("td", {}, fmt(a.actor)),
    h("td", {}, fmt(a.action)),
    h("td", {}, fmt(a.target)),
    h("td", { class: "detail" }, fmt(a.detail)));
}

async function load() {
  try {
    const data = await endpoints.audit({ ...state.filters, limit: PAGE_SIZE, cursor: state.cursors[state.page] });
    const items = itemsOf(data);
    state.next = (data && data.next_cursor) || "";
    $("#audit tbody").replaceChildren(...items.map(row));
    $("#audit-empty").hidden = items.length > 0;
    $("#audit-page").textContent = `Page ${state.page + 1}`;
    $("#audit-prev").disabled = state.page === 0;
    $("#audit-next").disabled = !state.next;
  } catch (e) {
    status(`Could not load the audit log: ${e.message}`, "error");
  }
}

/** RFC 4180 quoting; a leading =, +, - or @ is defused so spreadsheets do not run it as a formula. */
export function csvField(value) {
  let s = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

async function exportCsv() {
  const lines = [["seq", "at", "actor", "action", "target", "detail", "hash"].join(",")];
  let cursor = "";
  let count = 0;
  do {
    const data = await endpoints.audit({ ...state.filters, limit: 200, cursor });
    for (const a of itemsOf(data)) {
      lines.push([a.seq, a.at, a.actor, a.action, a.target, a.detail, a.hash].map(csvField).join(","));
      count += 1;
    }
    cursor = (data && data.next_cursor) || "";
    status(`Exporting: ${count} entries…`);
  } while (cursor && count < EXPORT_CAP);
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: `keyward-audit-${new Date().toISOString().slice(0, 10)}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  status(`Exported ${count} entries${cursor ? " (capped)" : ""}.`);
}

export function init() {
  const p = new URLSearchParams(location.search);
  if (p.get("user_id")) $("#audit-user").value = p.get("user_id");
  state.filters = readForm();
  $("#audit-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = readForm();
    state.cursors = [""];
    state.page = 0;
    load();
  });
  $("#audit-next").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    load();
  });
  $("#audit-prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    load();
  });
  $("#audit-export").addEventListener("click", (ev) =>
    busy(ev.currentTarget, () => exportCsv().catch((e) => status(`Export failed: ${e.message}`, "error"))),
  );
  load();
}
