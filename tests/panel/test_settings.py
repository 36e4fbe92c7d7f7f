"""The Settings page in a real browser: owners change the delegated-session length and the AAGUID
of new keys (and the server applies them), the server's refusals show on the page, an auditor sees
the settings read-only, and neither a helpdesk nor an auditor can change them through the API.

The settings are the shared test server's: the test puts them back as it found them.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from panel_support import email_of, run_cli

NEW_AAGUID = "0f5c9a2e-7b1d-4c3e-8a6f-2d9e4b7c1a05"


@pytest.fixture
def original_settings(server):
    status, before = server.api("GET", "/settings")
    if status == 404:
        pytest.skip("the server offers no /api/v1/settings")
    assert status == 200, before
    yield before
    restore = {k: before[k] for k in ("aaguid", "attestation", "min_pin_length", "pin_policy",
                                       "delegated_session_minutes")}
    status, after = server.api("PUT", "/settings", restore)
    assert status == 200, after


def test_owner_changes_session_length_and_aaguid(as_role, server, original_settings, screenshot_dir):
    page = as_role("owner")
    page.goto("/settings")
    form = page.locator("#settings-form")
    session = form.get_by_label("Delegated session length (minutes)")
    aaguid = form.get_by_label("AAGUID of new keys")
    expect(session).to_have_value(str(original_settings["delegated_session_minutes"]))
    expect(aaguid).to_have_value(original_settings["aaguid"])
    expect(form.get_by_label("The user sets a PIN when activating the key")).to_be_checked()
    expect(page.locator("#settings-readonly")).to_be_hidden()
    page.screenshot(path=str(screenshot_dir / "settings.png"), full_page=True)

    session.fill("5")
    aaguid.fill(NEW_AAGUID)
    form.get_by_role("button", name="Save settings").click()
    expect(page.locator("#page-status")).to_have_text("Settings saved.")
    expect(page.locator("#settings-updated")).to_contain_text(email_of("owner"))
    page.reload()
    expect(session).to_have_value("5")
    expect(aaguid).to_have_value(NEW_AAGUID)

    status, saved = server.api("GET", "/settings")
    assert status == 200
    assert saved["delegated_session_minutes"] == 5 and saved["aaguid"] == NEW_AAGUID
    # The change is in the audit log with its old and new values. (That new keys get the AAGUID
    # is proven by crates/server/tests/settings_api.rs; the users here are shared with other tests.)
    status, audit = server.api("GET", "/audit?action=settings.update")
    assert status == 200 and audit["items"], audit
    changed = audit["items"][0]["detail"]["changed"]
    assert changed["delegated_session_minutes"]["to"] == 5
    assert changed["aaguid"] == {"from": original_settings["aaguid"], "to": NEW_AAGUID}

    # A value the browser accepts but the server refuses: the reason shows, nothing is saved.
    aaguid.fill("00000000-0000-0000-0000-000000000000")
    form.get_by_role("button", name="Save settings").click()
    expect(page.locator("#settings-error")).to_contain_text("nil UUID")
    status, unchanged = server.api("GET", "/settings")
    assert unchanged["aaguid"] == NEW_AAGUID
    # Out of range values are stopped in the browser, with the field's own message.
    aaguid.fill(NEW_AAGUID)
    session.fill("16")
    form.get_by_role("button", name="Save settings").click()
    assert page.evaluate("document.querySelector('#settings-session').validity.rangeOverflow")
    status, unchanged = server.api("GET", "/settings")
    assert unchanged["delegated_session_minutes"] == 5
    assert not page.problems.items, page.problems.items


def test_auditor_sees_settings_read_only_and_cannot_change_them(as_role, server, original_settings,
                                                                screenshot_dir):
    page = as_role("auditor")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    page.wait_for_url("**/settings")
    form = page.locator("#settings-form")
    expect(form.get_by_label("AAGUID of new keys")).to_have_value(original_settings["aaguid"])
    expect(form.get_by_label("AAGUID of new keys")).to_be_disabled()
    expect(form.get_by_label("Delegated session length (minutes)")).to_be_disabled()
    expect(page.locator("#settings-readonly")).to_be_visible()
    expect(form.get_by_role("button", name="Save settings")).to_be_hidden()
    page.screenshot(path=str(screenshot_dir / "settings-auditor.png"), full_page=True)
    token = run_cli(server.binary, server.env, "token", "create", "--email", email_of("auditor"),
                    "--name", "settings-test")
    status, problem = server.api("PUT", "/settings", {"delegated_session_minutes": 1}, token=token)
    assert status == 403, (status, problem)
    assert not page.problems.items, page.problems.items


def test_helpdesk_can_neither_read_nor_change_settings(as_role, server, original_settings):
    page = as_role("helpdesk")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings")).to_be_hidden()
    page.goto("/settings")
    expect(page.locator("#page-status")).to_have_text(re.compile("does not allow"))
    expect(page.locator("#settings-form")).to_be_hidden()
    token = run_cli(server.binary, server.env, "token", "create", "--email", email_of("helpdesk"),
                    "--name", "settings-test")
    for method, body in (("GET", None), ("PUT", {"delegated_session_minutes": 1})):
        status, problem = server.api(method, "/settings", body, token=token)
        assert status == 403, (method, status, problem)
    status, now = server.api("GET", "/settings")
    assert now["delegated_session_minutes"] == original_settings["delegated_session_minutes"]
