"""One-time PINs in a real browser (design.md "Flows" step 2).

The owner chooses the `admin_one_time` PIN policy on the Settings page; assigning keys then shows
each key's one-time PIN once (several users: a table to copy or download as CSV), and closing the
dialog forgets them. On a user's page, a helpdesk sets a new one-time PIN after a confirmation
(the forgotten-PIN path); an auditor does not get the action.

Its own `keyward serve` for this module: the shared server's demo users are counted by other tests.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect

from panel_support import Serve, email_of, http, sign_in_page, stop_process

ORG = "Pin Org"
PIN = re.compile(r"^\d{8}$")
SHOWN: list[str] = []  # every PIN the tests saw, to look for in the server's log at the end


@dataclass
class Keyward:
    url: str
    token: str

    def api(self, method: str, path: str, body=None):
        return http(method, self.url + "/api/v1" + path, body, self.token)

    def user(self, upn: str, name: str) -> dict:
        status, user = self.api("POST", "/users", {"upn": upn, "display_name": name})
        assert status == 201, user
        return user


@pytest.fixture(scope="module")
def keyward():
    serve = Serve("keyward-pins-")
    token = serve.seed(ORG, "pins")
    serve.start()
    yield Keyward(url=serve.url, token=token)
    stop_process(serve.proc)  # the whole log is written once the server has stopped
    logged = serve.log_path.read_text()
    serve.stop()
    # Nothing the server wrote mentions a PIN shown in these tests.
    for pin in SHOWN:
        assert pin not in logged, "a one-time PIN in the server's log"


def sign_in(browser, server: Keyward, role: str):
    def watch(page):
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))

    page = sign_in_page(browser, server.url, email_of(role), watch=watch)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.wait_for_selector("#whoami:has-text('" + role + "')")
    return page


def rows(page):
    return page.locator("#users-table tbody tr")


def test_owner_chooses_one_time_pins_and_assigning_shows_them_once(browser, keyward, screenshot_dir):
    page = sign_in(browser, keyward, "owner")
    page.goto("/settings")
    form = page.locator("#settings-form")
    expect(form.get_by_label("The user sets a PIN when activating the key")).to_be_checked()
    form.get_by_label(re.compile("An admin gets a one-time PIN when assigning the key")).check()
    form.get_by_role("button", name="Save settings").click()
    expect(page.locator("#page-status")).to_have_text("Settings saved.")
    status, settings = keyward.api("GET", "/settings")
    assert status == 200 and settings["pin_policy"] == "admin_one_time", settings
    page.reload()
    expect(form.get_by_label(re.compile("An admin gets a one-time PIN"))).to_be_checked()

    users = [keyward.user(f"pin-{i}@pins.test", f"Pin User {i}") for i in range(1, 4)]

    # Bulk: two users selected, one dialog with both PINs, copy and CSV download.
    page.goto("/users")
    page.get_by_label("Search").fill("pin-")
    page.get_by_label("Search").press("Enter")
    expect(rows(page)).to_have_count(3)
    page.get_by_label("Select Pin User 1").check()
    page.get_by_label("Select Pin User 2").check()
    page.get_by_role("button", name="Assign key").click()
    dialog = page.locator("#pin-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text("One-time PINs for 2 users")
    expect(dialog).to_contain_text("changes it, the first time they use the key")
    table = dialog.locator("#pin-table tbody tr")
    expect(table).to_have_count(2)
    shown = {}
    for i in range(2):
        row = table.nth(i)
        name = row.locator("th").inner_text()
        shown[name] = row.locator("output").inner_text()
    assert set(shown) == {"Pin User 1", "Pin User 2"}, shown
    assert all(PIN.match(p) for p in shown.values()), shown
    assert len(set(shown.values())) == 2
    SHOWN.extend(shown.values())
    page.screenshot(path=str(screenshot_dir / "one-time-pins.png"), full_page=True)

    dialog.get_by_role("button", name="Copy").click()
    expect(page.locator("#page-status")).to_have_text("2 one-time PINs copied as CSV.")
    copied = page.evaluate("navigator.clipboard.readText()")
    with page.expect_download() as download:
        dialog.get_by_role("button", name="Download CSV").click()
    downloaded = Path(download.value.path()).read_bytes().decode()
    assert downloaded == copied
    lines = list(csv.DictReader(io.StringIO(downloaded)))
    assert {(r["upn"], r["one_time_pin"]) for r in lines} == {
        ("pin-1@pins.test", shown["Pin User 1"]), ("pin-2@pins.test", shown["Pin User 2"])}

    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    # Closing forgets them: the page holds no PIN any more.
    expect(dialog.locator("output")).to_have_count(0)
    for pin in shown.values():
        assert pin not in page.content()
    expect(rows(page).filter(has_text="Pin User 1")).to_contain_text("Assigned")
    for user in users[:2]:
        status, current = keyward.api("GET", f"/users/{user['id']}")
        status, key = keyward.api("GET", f"/keys/{current['key_id']}")
        assert key["pin_set"] and key["force_pin_change"], key

    # One user, from the user's page.
    page.goto(f"/users/{users[2]['id']}")
    page.get_by_role("button", name="Assign key").click()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text("One-time PIN")
    expect(dialog.locator("#pin-list")).to_contain_text("One-time PIN for Pin User 3")
    single = dialog.locator("output").inner_text()
    assert PIN.match(single), single
    SHOWN.append(single)
    expect(dialog.get_by_role("button", name="Download CSV")).to_be_hidden()
    dialog.get_by_role("button", name="Copy").click()
    expect(page.locator("#page-status")).to_have_text("One-time PIN copied.")
    assert page.evaluate("navigator.clipboard.readText()") == single
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(dialog.locator("output")).to_have_count(0)
    expect(page.locator("#key")).to_contain_text("one-time PIN: the user must change it at first use")
    page.reload()
    expect(page.locator("#key")).to_contain_text("one-time PIN")
    assert single not in page.content()
    assert not page.errors, page.errors

    # The audit log names the admin who set each PIN, never the PIN.
    status, audit = keyward.api("GET", "/audit?action=key.pin_set")
    assert status == 200 and len(audit["items"]) == 3, audit
    assert all(e["actor"].endswith(email_of("owner")) for e in audit["items"])
    for pin in SHOWN:
        assert pin not in json.dumps(audit)

    status, _ = keyward.api("PUT", "/settings", {"pin_policy": "user"})
    assert status == 200
    page.context.close()


def test_helpdesk_sets_a_one_time_pin_and_an_auditor_cannot(browser, keyward, screenshot_dir):
    # Whatever the policy, the helpdesk can set a one-time PIN; start from a key without a PIN.
    status, _ = keyward.api("PUT", "/settings", {"pin_policy": "user"})
    assert status == 200
    user = keyward.user("forgot@pins.test", "Forgetful Fran")
    status, assigned = keyward.api("POST", f"/users/{user['id']}/key")
    assert status == 201, assigned
    key_id = assigned["key_id"]

    page = sign_in(browser, keyward, "helpdesk")
    page.goto(f"/users/{user['id']}")
    button = page.get_by_role("button", name="Set one-time PIN")
    expect(button).to_be_visible()
    expect(page.locator("#key")).to_contain_text("not set")
    dialog = page.locator("#pin-dialog")

    # Cancelling changes nothing.
    button.click()
    expect(dialog).to_be_visible()
    expect(dialog.locator("#pin-confirm-text")).to_contain_text("Forgetful Fran")
    expect(dialog.locator("#pin-confirm-text")).to_contain_text("their passkeys stay")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    status, key = keyward.api("GET", f"/keys/{key_id}")
    assert not key["pin_set"], key

    button.click()
    dialog.get_by_role("button", name="Yes, set a new PIN").click()
    expect(dialog.locator("#pin-result")).to_be_visible()
    pin = dialog.locator("output").inner_text()
    assert PIN.match(pin), pin
    SHOWN.append(pin)
    expect(dialog).to_contain_text("Shown once")
    page.screenshot(path=str(screenshot_dir / "user-one-time-pin.png"))  # the dialog covers the viewport, not the full page
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#page-status")).to_have_text("A one-time PIN was set on the key.")
    expect(page.locator("#key")).to_contain_text("the user must change it at first use")
    status, key = keyward.api("GET", f"/keys/{key_id}")
    assert key["pin_set"] and key["force_pin_change"] and key["pin_retries"] == 8, key
    status, audit = keyward.api("GET", "/audit?action=key.pin_set")
    assert audit["items"][0]["actor"].endswith(email_of("helpdesk")), audit["items"][0]
    assert audit["items"][0]["target"] == f"key:{key_id}"

    # A suspended key: the action goes away (the server would refuse it with 409).
    status, _ = keyward.api("POST", f"/keys/{key_id}/suspend")
    assert status == 200
    page.reload()
    expect(page.locator("#key")).to_contain_text("suspended")
    expect(button).to_be_hidden()
    status, _ = keyward.api("POST", f"/keys/{key_id}/resume")
    assert status == 200
    assert not page.errors, page.errors
    page.context.close()

    auditor = sign_in(browser, keyward, "auditor")
    auditor.goto(f"/users/{user['id']}")
    expect(auditor.locator("#key")).to_contain_text("active")
    expect(auditor.get_by_role("button", name="Set one-time PIN")).to_be_hidden()
    expect(auditor.get_by_text("For a forgotten or blocked PIN")).to_be_hidden()
    assert not auditor.errors, auditor.errors
    auditor.context.close()
