"""Admin sign-in in a real browser: the first-run set-up link, passkeys with Chromium's virtual
authenticator, and refusals.

A fresh `keyward serve` with an empty data directory prints a one-time set-up link on stderr; the
tests follow it, create the owner, register a passkey on the "My account" page and sign in with
it. The panel is opened at http://localhost:PORT, the server's default public URL on loopback:
WebAuthn does not accept an IP address as relying-party id.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from panel_support import Serve, http, run_cli

ORG = "Fresh Start Ltd"
OWNER = "founder@fresh.test"
PASSWORD = "a long first-run password"


class Fresh:
    def __init__(self, url: str, link: str, log: Path, binary: str, env: dict):
        self.url = url
        self.link = link
        self.log = log
        self.binary = binary
        self.env = env

    def post(self, path: str, body: dict) -> tuple[int, dict | None]:
        return http("POST", self.url + "/api/v1" + path, body, timeout=10)


@pytest.fixture(scope="module")
def fresh():
    """`keyward serve` on an empty data directory; its printed set-up link."""
    serve = Serve("keyward-auth-", host="localhost")
    serve.start()
    log_path = serve.log_path
    link = None
    deadline = time.monotonic() + 60
    while link is None:
        found = re.search(r"(http://localhost:\d+/setup#token=\S+)", log_path.read_text())
        if found:
            link = found.group(1)
        elif time.monotonic() > deadline:
            serve.stop()
            pytest.fail("no set-up link within 60 s: " + log_path.read_text()[-2000:])
        else:
            time.sleep(0.2)
    assert link.startswith(serve.url + "/setup#token=")
    # The token is printed on stderr only, never into the log lines.
    assert "token=" not in "".join(l for l in log_path.read_text().splitlines(True) if " INFO " in l or " WARN " in l)
    yield Fresh(serve.url, link, log_path, serve.binary, serve.env)
    serve.stop()


def virtual_authenticator(context, page):
    """A platform authenticator with user verification, as Chromium's DevTools protocol offers."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    made = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True,
    }})
    return cdp, made["authenticatorId"]


def password_sign_in(page):
    page.goto("/sign-in")
    page.get_by_label("E-mail address").fill(OWNER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text(OWNER)


def test_first_run_setup_through_the_printed_link_works_once(browser, fresh, screenshot_dir):
    context = browser.new_context(base_url=fresh.url)
    page = context.new_page()
    page.goto(fresh.link)
    expect(page.get_by_role("heading", name="Set up Keyward")).to_be_visible()
    page.get_by_label("Organisation name").fill(ORG)
    page.get_by_label("Your e-mail address").fill(OWNER)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD + " typo")
    page.get_by_role("button", name="Create the owner account").click()
    expect(page.locator("#setup-error")).to_have_text("The two passwords differ.")
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.screenshot(path=str(screenshot_dir / "setup.png"), full_page=True)
    page.get_by_role("button", name="Create the owner account").click()
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text(f"{OWNER} (owner")
    context.close()

    # The link is spent: the page says set-up is done, and the API refuses with a clear 409.
    context = browser.new_context(base_url=fresh.url)
    page = context.new_page()
    page.goto(fresh.link)
    expect(page.locator("#setup-done")).to_be_visible()
    expect(page.locator("#setup-form")).to_be_hidden()
    page.screenshot(path=str(screenshot_dir / "setup-done.png"), full_page=True)
    context.close()
    token = fresh.link.split("#token=", 1)[1]
    status, problem = fresh.post("/setup", {"token": token, "org": "Again", "email": "x@y.test",
                                            "password": "another long password"})
    assert status == 409, (status, problem)
    assert "set-up is done" in problem["detail"]


def test_passkey_registration_and_sign_in_with_chromiums_virtual_authenticator(browser, fresh, screenshot_dir):
    context = browser.new_context(base_url=fresh.url)
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(context, page)
    password_sign_in(page)
    page.get_by_role("link", name="My account").click()
    page.wait_for_url("**/account")
    expect(page.locator("#passkeys-empty")).to_be_visible()
    page.get_by_label("Name of the new passkey").fill("Chromium virtual key")
    page.get_by_role("button", name="Register a passkey").click()
    expect(page.locator("#page-status")).to_contain_text("Passkey Chromium virtual key registered")
    expect(page.locator("#passkeys tbody tr")).to_have_count(1)
    expect(page.locator("#passkeys tbody tr").first).to_contain_text("Chromium virtual key")
    creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(creds) == 1 and creds[0]["isResidentCredential"] and creds[0]["rpId"] == "localhost"
    page.screenshot(path=str(screenshot_dir / "account-passkeys.png"), full_page=True)

    # Signed out, the passkey alone signs the owner in again: no e-mail address, no password.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    passkey_button = page.get_by_role("button", name="Sign in with a passkey")
    expect(passkey_button).to_be_visible()
    page.screenshot(path=str(screenshot_dir / "sign-in-passkey.png"), full_page=True)
    passkey_button.click()
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text(OWNER)
    sign_count = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"][0]["signCount"]
    assert sign_count >= 2, "registration and sign-in each counted"

    # With an e-mail address typed in, only that admin's passkey is accepted.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    page.get_by_label("E-mail address").fill("someone-else@fresh.test")
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page.locator("#signin-error")).to_have_text(
        "This passkey is not registered for an enabled admin here.")
    page.get_by_label("E-mail address").fill(OWNER)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text(OWNER)

    # The list shows when it was last used.
    page.goto("/account")
    expect(page.locator("#passkeys tbody tr").first.locator("td").nth(2)).not_to_have_text("—")
    context.close()


def test_a_deleted_or_unknown_passkey_is_refused(browser, fresh):
    context = browser.new_context(base_url=fresh.url)
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(context, page)
    password_sign_in(page)
    page.goto("/account")
    expect(page.locator("#passkeys")).to_have_attribute("aria-busy", "false")
    before = page.locator("#passkeys tbody tr").count()
    page.get_by_label("Name of the new passkey").fill("Soon deleted")
    page.get_by_role("button", name="Register a passkey").click()
    expect(page.locator("#passkeys tbody tr")).to_have_count(before + 1)
    # Deleting it on the server leaves the credential on the authenticator: the server no longer
    # knows it, so signing in with it must fail.
    page.get_by_role("button", name="Delete passkey Soon deleted").click()
    expect(page.locator("#passkeys tbody tr")).to_have_count(before)
    assert len(cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]) == 1
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page.locator("#signin-error")).to_have_text(
        "This passkey is not registered for an enabled admin here.")
    assert page.url.endswith("/sign-in")
    page.goto("/users")
    page.wait_for_url(re.compile("/sign-in"))
    context.close()


def test_keyward_admin_login_link_signs_in_once(browser, fresh):
    """`keyward admin login-link` prints a link (and only it) that signs the admin in once."""
    link = run_cli(fresh.binary, fresh.env, "admin", "login-link", "--email", OWNER)
    assert re.fullmatch(re.escape(fresh.url) + r"/sign-in#link=kwlink_[A-Za-z0-9_-]{43}", link), link
    context = browser.new_context()
    page = context.new_page()
    page.goto(link)
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text(OWNER)
    # The token does not stay in the address bar or the history.
    assert "link=" not in page.url
    context.close()
    context = browser.new_context()
    page = context.new_page()
    page.goto(link)
    expect(page.locator("#signin-error")).to_contain_text("already used or has expired")
    context.close()
    with pytest.raises(RuntimeError, match="no admin"):
        run_cli(fresh.binary, fresh.env, "admin", "login-link", "--email", "nobody@fresh.test")
