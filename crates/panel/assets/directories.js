// Keyward panel: Directories → Import from Azure AD (Entra ID). Connections are listed from
// GET /directories; a new one is saved and immediately tested (the server's pre-flight gives
// plain-language reasons); an import runs as a job shown at the top of the page.

import { endpoints, itemsOf } from "./api.js";
import { loadFailure, $, h, can, busy, status, fmt, fmtTime, showError } from "./ui.js";
import { watchJob, initJobRegion } from "./jobs.js";

function showTest(dir, result) {
  const box = $("#directory-test");
  const ok = result && (result.ok ?? result.success ?? (Array.isArray(result.problems) ? result.problems.length === 0 : true));
  const reasons = (result && (result.problems || result.reasons || result.errors)) || [];
  box.replaceChildren(
    h("h3", {}, `Test of ${dir.name || dir.id}: ${ok ? "passed" : "failed"}`),
    reasons.length
      ? h("ul", {}, ...reasons.map((r) => h("li", {}, typeof r === "string" ? r : r.reason || r.message || JSON.stringify(r))))
      : h("p", {}, ok ? "Keyward can read users and provision passkeys with this connection." : "No reason was given."),
  );
  box.dataset.ok = String(Boolean(ok));
  box.hidden = false;
}

async function test(dir, button) {
  await busy(button, async () => {
    status(`Testing ${dir.name || "the connection"}…`);
    try {
      showTest(dir, await endpoints.testDirectory(dir.id));
      status("Test finished.");
    } catch (e) {
      showTest(dir, { ok: false, problems: [e.message] });
      status("Test failed.", "error");
    }
  });
}

function lastImport(dir) {
  const li = dir.last_import || {};
  const at = li.finished_at || li.at || dir.last_import_at;
  if (!at && !li.state) return "Never";
  const parts = [fmtTime(at)];
  if (li.state) parts.push(li.state);
  for (const k of ["created", "updated", "disabled", "failed"]) if (li[k] !== undefined) parts.push(`${li[k]} ${k}`);
  return parts.join(", ");
}

function row(dir) {
  const actions = h("td", { class: "actions" });
  if (can("directories.import")) {
    actions.append(h("button", {
      type: "button",
      onclick: (ev) => busy(ev.currentTarget, async () => {
        try {
          const res = await endpoints.importDirectory(dir.id);
          watchJob(res.job_id, `Import from ${dir.name || "Entra ID"}`, load);
        } catch (e) {
          status(`Could not start the import: ${e.message}`, "error");
        }
      }),
    }, "Import users"));
  }
  if (can("directories.import")) {
    actions.append(" ", h("button", { type: "button", onclick: (ev) => test(dir, ev.currentTarget) }, "Test connection"));
  }
  return h("tr", {},
    h("th", { scope: "row" }, fmt(dir.name)),
    h("td", {}, fmt(dir.tenant_id)),
    h("td", {}, lastImport(dir)),
    actions);
}

async function load() {
  try {
    const dirs = itemsOf(await endpoints.directories());
    $("#directories tbody").replaceChildren(...dirs.map(row));
    $("#directories-empty").hidden = dirs.length > 0;
    const withErrors = dirs.find((d) => d.last_import && Array.isArray(d.last_import.errors) && d.last_import.errors.length);
    if (withErrors) {
      status(`Last import of ${withErrors.name}: ${withErrors.last_import.errors.length} error(s). ` +
        withErrors.last_import.errors.slice(0, 5).map((e) => e.reason || e.message || String(e)).join("; "), "error");
    }
  } catch (e) {
    status(...loadFailure("directory connections", e));
  }
}

export function init() {
  initJobRegion(load);
  const form = $("#entra-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("#entra-error", null);
    const body = {
      name: $("#entra-name").value.trim(),
      tenant_id: $("#entra-tenant").value.trim(),
      client_id: $("#entra-client").value.trim(),
      client_secret: $("#entra-secret").value,
    };
    const authority = $("#entra-authority").value.trim();
    const graph = $("#entra-graph").value.trim();
    if (authority) body.authority_url = authority;
    if (graph) body.graph_url = graph;
    await busy(form.querySelector("button[type=submit]"), async () => {
      try {
        const dir = await endpoints.createEntra(body);
        // The secret has done its job; do not keep it in the page.
        form.reset();
        await load();
        await test({ ...body, ...dir, client_secret: undefined }, form.querySelector("button[type=submit]"));
      } catch (e) {
        showError("#entra-error", e);
      }
    });
  });
  load();
}
