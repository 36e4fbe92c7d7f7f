// Keyward panel: the progress region of a job (import, provisioning). It follows the job's
// server-sent events and falls back to polling GET /jobs/{id} when the stream fails (a proxy that
// buffers, an old browser). The job being watched is remembered per tab, so a reload resumes it.

import { endpoints, ApiError } from "./api.js";
import { $, h, can, busy, status, showSecret } from "./ui.js";

const TERMINAL = new Set(["done", "failed", "cancelled"]);
const STORE_KEY = "keyward.job." + location.pathname;
const POLL_MS = 1500;
const ITEMS_REFRESH_MS = 2000;

let watch = null;

/** Names of users by id, so the result table can say who rather than which uuid. */
const names = new Map();
export function rememberUserNames(users) {
  for (const u of users) names.set(u.id, u.display_name || u.upn || u.email || u.id);
}

function counts(job) {
  const total = Number(job.total) || 0;
  const done = Number(job.done) || 0;
  const failed = Number(job.failed) || 0;
  return { total, done, failed, state: job.state || "running" };
}

function render(job, label) {
  const c = counts(job);
  const bar = $("#job-bar");
  bar.max = Math.max(c.total, 1);
  bar.value = Math.min(c.done + c.failed, bar.max);
  const finished = c.done + c.failed;
  $("#job-title").textContent = label;
  $("#job-counts").textContent =
    `${c.state}: ${finished} of ${c.total} processed, ${c.done} succeeded, ${c.failed} failed`;
  $("#job").dataset.state = c.state;
  const retry = $("#job-retry");
  const cancel = $("#job-cancel");
  if (can("provisioning")) {
    retry.hidden = !(TERMINAL.has(c.state) && c.failed > 0);
    cancel.hidden = TERMINAL.has(c.state);
  }
}

/** Reveals a manual item's Temporary Access Pass: once, on the admin's explicit request. */
async function revealTap(jobId, item, button) {
  await busy(button, async () => {
    try {
      const tap = await endpoints.revealTap(jobId, item.user_id);
      const who = names.get(item.user_id) || item.user_id;
      const lines = [];
      if (tap.expires_in_minutes) lines.push(`Valid for ${tap.expires_in_minutes} minutes from its creation.`);
      lines.push(...(Array.isArray(tap.instructions) ? tap.instructions : []));
      showSecret($("#job-tap"), `Temporary Access Pass for ${who}`, tap.temporary_access_pass, lines);
      button.remove();
    } catch (e) {
      status(`Could not show the Temporary Access Pass: ${e.message}`, "error");
    }
  });
}

function renderItems(jobId, job) {
  const items = Array.isArray(job.items) ? job.items : [];
  const rows = [];
  for (const i of items) {
    const tapAvailable = Boolean(i.result && i.result.tap_available);
    // Successful items are summarised by the counts; the table lists what needs attention.
    if (i.state === "done" && !i.error && !tapAvailable) continue;
    const reason = h("td", {}, i.error || (i.state === "done" ? "" : "…"));
    if (tapAvailable && can("provisioning")) {
      const who = names.get(i.user_id) || i.user_id;
      reason.append(h("button", {
        type: "button",
        onclick: (ev) => revealTap(jobId, i, ev.currentTarget),
      }, `Show the Temporary Access Pass for ${who}`));
    }
    rows.push(h("tr", { dataset: { state: i.state } },
      h("td", {}, names.get(i.user_id) || i.user_id),
      h("td", {}, i.state),
      reason));
  }
  // Re-rendering would drop a reveal button mid-click; keep the table while nothing changed.
  const signature = JSON.stringify(items.map((i) => [i.user_id, i.state, i.error, i.result && i.result.tap_available]));
  const table = $("#job-items");
  if (table.dataset.signature === signature) return;
  table.dataset.signature = signature;
  $("#job-items tbody").replaceChildren(...rows);
  table.hidden = rows.length === 0;
}

function stop() {
  if (!watch) return;
  if (watch.source) watch.source.close();
  clearTimeout(watch.timer);
  watch = null;
}

/**
 * Shows job `id` in the page's job region and follows it to its end. `onFinish(job)` runs once
 * when the job reaches done, failed or cancelled.
 */
export function watchJob(id, label, onFinish) {
  stop();
  sessionStorage.setItem(STORE_KEY, JSON.stringify({ id, label }));
  const region = $("#job");
  region.hidden = false;
  $("#job-tap").hidden = true;
  $("#job-items").dataset.signature = "";
  const w = { id, label, source: null, timer: 0, lastItems: 0, finished: false };
  watch = w;
  render({ state: "queued", total: 0, done: 0, failed: 0 }, label);

  const refresh = async () => {
    try {
      const job = await endpoints.job(id);
      if (watch !== w) return null;
      render(job, label);
      renderItems(id, job);
      w.lastItems = Date.now();
      if (TERMINAL.has(job.state) && !w.finished) {
        w.finished = true;
        stop();
        status(`${label} ${job.state}.`, job.failed > 0 ? "error" : "info");
        if (onFinish) onFinish(job);
      }
      return job;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        stop();
        sessionStorage.removeItem(STORE_KEY);
        region.hidden = true;
      }
      return null;
    }
  };

  const poll = async () => {
    await refresh();
    if (watch === w) w.timer = setTimeout(poll, POLL_MS);
  };

  if (typeof EventSource === "function") {
    const source = new EventSource(endpoints.jobEventsUrl(id), { withCredentials: true });
    w.source = source;
    const onEvent = (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      render(data, label);
      // The stream carries counts; fetch the per-user results now and then, and at the end.
      if (TERMINAL.has(data.state) || Date.now() - w.lastItems > ITEMS_REFRESH_MS) refresh();
    };
    for (const name of ["message", "progress", "job", "update", "done"]) {
      source.addEventListener(name, onEvent);
    }
    source.onerror = () => {
      // A closed or failing stream: fall back to polling until the job ends.
      source.close();
      if (watch === w && !w.finished) {
        w.source = null;
        poll();
      }
    };
    refresh();
  } else {
    poll();
  }
}

/** Wires the region's buttons and resumes a job this tab was watching. */
export function initJobRegion(onFinish) {
  const region = $("#job");
  if (!region) return;
  $("#job-close").addEventListener("click", () => {
    stop();
    sessionStorage.removeItem(STORE_KEY);
    region.hidden = true;
  });
  $("#job-retry").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      if (!saved) return;
      try {
        const res = await endpoints.retryJob(saved.id);
        watchJob((res && res.job_id) || saved.id, saved.label, onFinish);
      } catch (e) {
        status(e.message, "error");
      }
    }),
  );
  $("#job-cancel").addEventListener("click", (ev) =>
    busy(ev.currentTarget, async () => {
      const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      if (!saved) return;
      try {
        await endpoints.cancelJob(saved.id);
        status("Cancelling the job…");
      } catch (e) {
        status(e.message, "error");
      }
    }),
  );
  const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
  if (saved && saved.id) watchJob(saved.id, saved.label, onFinish);
}
