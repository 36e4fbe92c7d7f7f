"""The panel's whole scenarios in a real browser, against real parts only.

One `keyward serve` and one Graph simulator (`keyward-graph-sim`, its own tenant of 22 users) for
this module; the admin works through the panel as a person would:

1. imports the simulated tenant, selects 20 users, runs *Automated RP Provisioning → Microsoft*,
   watches the progress bar move and every user end done; then each of the 20 signs in at the
   simulator with their own key. The assertion comes from the key Keyward holds, through the
   user's own pairing tool: `keyward-pair activate` with an activation code from the API, then
   `keyward-pair run --udp`, then python-fido2 sets the user's PIN and signs the simulator's
   challenge with UV, and the simulator verifies it against the passkey Graph registered. (The
   server's own key operations are registration-only for admins, and a delegated session refuses
   assertions: the user's tool is the one honest way to sign in.)
2. a fault at the simulator (every Graph call refused with 403) makes a user fail; the page shows
   the reason; the fault is removed; *Retry failed*; the user ends done.
3. the admin's `keyward-pair` (logged in with an API token, `run --udp`) shows online on a user's
   page; *Connect to register passkeys*; python-fido2 registers a credential at a test RP through
   the tool; the page lists it as created by that admin, delegated; *Disconnect*; the tool has no
   key within a second.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect

from panel_support import ROOT, Serve, binary, email_of, http, run_cli, sign_in_page, stop_process

sys.path.insert(0, str(ROOT / "tests" / "interop"))  # the UDP CTAP-HID connection of the interop suite

ORG = "Scenario Org"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CLIENT = "12345678-1234-1234-1234-123456789abc"
SECRET = "scenario-client-secret"
SIM_USERS = 22  # user 0 is the consenting admin, for whom Entra refuses passkeys
CONSENTING_ADMIN = "admin@contoso.example"
MS_RP = "login.microsoft.com"
PIN = "scenario pin 1234"
SERVING = re.compile(r"serving CTAP-HID on udp://(\S+):(\d+)")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Keyward:
    url: str
    env: dict
    binary: str
    token: str

    def api(self, method: str, path: str, body=None, token: str | None = None):
        return http(method, self.url + "/api/v1" + path, body, token or self.token)


@pytest.fixture(scope="module")
def keyward():
    serve = Serve("keyward-scenarios-")
    token = serve.seed(ORG, "scenarios")
    serve.start()
    yield Keyward(url=serve.url, env=serve.env, binary=serve.binary, token=token)
    serve.stop()


@pytest.fixture(scope="module")
def sim():
    proc = subprocess.Popen(
        [binary("KEYWARD_GRAPH_SIM_BIN", "keyward-graph-sim", "keyward-graph-sim"), "--users", str(SIM_USERS), "--seed", "7", "--tenant-id", TENANT, "--client-id", CLIENT,
         "--client-secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        pytest.fail(f"keyward-graph-sim did not start: {line!r}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    yield line.split("listening on ", 1)[1].strip()
    stop_process(proc)


class PairTool:
    """One `keyward-pair` home running `run --udp 127.0.0.1:0`."""

    def __init__(self, home: Path, server: str):
        self.bin = binary("KEYWARD_PAIR_BIN", "keyward-pair", "keyward-pair")
        self.home, self.server = home, server
        self.proc: subprocess.Popen | None = None
        self.address: tuple[str, int] | None = None
        self.lines: list[str] = []

    def cmd(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, "--home", str(self.home), *args], input=stdin, capture_output=True,
                              text=True, timeout=60)

    def run(self) -> None:
        self.proc = subprocess.Popen([self.bin, "--home", str(self.home), "run", "--udp", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = self.proc.stderr.readline()
        m = SERVING.search(first)
        if not m:
            self.stop()
            raise RuntimeError(f"keyward-pair run did not start: {first!r}")
        self.address = (m.group(1), int(m.group(2)))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, needle: str, timeout: float = 5.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if any(needle in line for line in self.lines):
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"keyward-pair never said {needle!r}; it said: {self.lines}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


def sign_in(browser, server: Keyward, role: str):
    def watch(page):
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))

    return sign_in_page(browser, server.url, email_of(role), watch=watch)


def rows(page):
    return page.locator("#users-table tbody tr")


def user_sign_in_at_simulator(server: Keyward, sim_url: str, user: dict, home: Path) -> dict:
    """The user activates their own pairing tool, sets a PIN, and signs in at the simulated Entra
    with the passkey Keyward registered for them. Returns the simulator's answer."""
    from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
    from fido2.ctap2 import Ctap2
    from fido2.ctap2.pin import ClientPin
    from fido2.webauthn import PublicKeyCredentialDescriptor, PublicKeyCredentialRequestOptions
    from udp_hid import open_device

    class Pin(UserInteraction):
        def request_pin(self, permissions, rp_id):
            return PIN

        def request_uv(self, permissions, rp_id):
            return True

    status, activation = server.api("POST", f"/users/{user['id']}/activation", {})
    assert status == 201, activation
    tool = PairTool(home, server.url)
    done = tool.cmd("activate", "--server", server.url, "--code", activation["code"])
    assert done.returncode == 0, done.stderr
    tool.run()
    try:
        tool.wait_for("key ", timeout=10)
        ctap2 = Ctap2(open_device(tool.address))
        if not ctap2.info.options.get("clientPin"):
            ClientPin(ctap2).set_pin(PIN)
        status, challenge = http("GET", f"{sim_url}/_sim/signin/challenge?user={user['upn']}")
        assert status == 200, challenge
        assert challenge["allowCredentials"], f"no passkey registered in Entra for {user['upn']}"
        options = PublicKeyCredentialRequestOptions(
            challenge=b64url_decode(challenge["challenge"]),
            rp_id=challenge["rpId"],
            allow_credentials=[PublicKeyCredentialDescriptor(type="public-key", id=b64url_decode(c))
                               for c in challenge["allowCredentials"]],
            user_verification="required",
        )
        client = Fido2Client(open_device(tool.address),
                             client_data_collector=DefaultClientDataCollector(f"https://{MS_RP}"),
                             user_interaction=Pin())
        result = client.get_assertion(options).get_response(0)
        assertion = {
            "user": user["upn"],
            "id": b64url(result.raw_id),
            "clientDataJSON": b64url(result.response.client_data),
            "authenticatorData": b64url(result.response.authenticator_data),
            "signature": b64url(result.response.signature),
        }
        if result.response.user_handle:
            assertion["userHandle"] = b64url(result.response.user_handle)
        status, answer = http("POST", f"{sim_url}/_sim/signin", assertion)
        assert status == 200, (user["upn"], answer)
        return answer
    finally:
        tool.stop()


def connect_directory(page, sim_url: str) -> None:
    page.goto("/directories")
    form = page.locator("#entra-form")
    form.get_by_label("Name").fill("Scenario tenant")
    form.get_by_label("Tenant id").fill(TENANT)
    form.get_by_label("Application (client) id").fill(CLIENT)
    form.get_by_label("Client secret").fill(SECRET)
    form.get_by_text("National cloud or simulator").click()
    form.get_by_label("Authority URL").fill(sim_url)
    form.get_by_label("Graph URL").fill(sim_url)
    form.get_by_role("button", name="Save and test connection").click()
    expect(page.locator("#directory-test")).to_contain_text("Test of Scenario tenant", timeout=30_000)
    row = page.locator("#directories tbody tr").filter(has_text="Scenario tenant")
    row.get_by_role("button", name="Import users").click()
    expect(page.locator("#job-counts")).to_have_text(re.compile(r"^done: "), timeout=90_000)


def record_progress(page) -> None:
    """Keeps every value the progress bar takes, to prove it moved through intermediate values."""
    page.evaluate("""() => {
        window.__barValues = [];
        const bar = document.querySelector('#job-bar');
        new MutationObserver(() => window.__barValues.push([bar.value, bar.max]))
            .observe(bar, {attributes: true, attributeFilter: ['value', 'max']});
    }""")


def submit_provisioning(page) -> None:
    page.get_by_role("button", name="Automated RP Provisioning").click()
    dialog = page.get_by_role("dialog", name="Automated RP Provisioning")
    expect(dialog.get_by_label("Microsoft (Entra ID)")).to_be_checked()
    dialog.get_by_role("button", name="Submit").click()
    expect(dialog).to_be_hidden()


def test_import_provision_twenty_watch_progress_and_each_signs_in(browser, keyward, sim, screenshot_dir,
                                                                  tmp_path):
    page = sign_in(browser, keyward, "owner")
    connect_directory(page, sim)
    status, listed = keyward.api("GET", "/users?source=entra&limit=200")
    assert status == 200
    entra = listed["items"]
    assert len(entra) == SIM_USERS, [u["upn"] for u in entra]
    admin = next(u for u in entra if u["upn"] == CONSENTING_ADMIN)
    others = [u for u in entra if u["id"] != admin["id"]]
    spare = others[-1]  # kept for the fault scenario
    chosen = others[:20]

    page.goto("/users?source=entra")
    expect(rows(page)).to_have_count(SIM_USERS)
    page.get_by_label("Select all users on this page").check()
    for u in (admin, spare):
        page.locator(f"#users-table tbody tr[data-id='{u['id']}'] input[type=checkbox]").uncheck()
    expect(page.locator("#selected-count")).to_have_text("20 selected")

    # Graph answers slowly enough for the bar to be seen moving (the simulator's latency knob).
    assert http("POST", f"{sim}/_sim/faults", {"latency_ms": 120})[0] == 204
    record_progress(page)
    submit_provisioning(page)
    expect(page.locator("#job-title")).to_have_text("Microsoft automated provisioning")
    counts = page.locator("#job-counts")
    expect(counts).to_have_text(re.compile(r"^running: \d+ of 20 processed"), timeout=30_000)
    page.screenshot(path=str(screenshot_dir / "scenario-provisioning-running.png"), full_page=True)
    expect(counts).to_have_text("done: 20 of 20 processed, 20 succeeded, 0 failed", timeout=180_000)
    assert http("POST", f"{sim}/_sim/faults", {"latency_ms": 0})[0] == 204
    page.screenshot(path=str(screenshot_dir / "scenario-provisioning-done.png"), full_page=True)
    values = page.evaluate("window.__barValues")
    intermediate = [v for v, m in values if 0 < v < 20 and m == 20]
    assert intermediate, f"the progress bar never showed an intermediate value: {values}"
    expect(page.locator("#job-bar")).to_have_attribute("value", "20")
    expect(page.locator("#job-items tbody tr[data-state=failed]")).to_have_count(0)

    # Each of the 20 holds one automated passkey for Microsoft and signs in with it at the
    # simulated Entra ID, through their own pairing tool.
    for i, user in enumerate(chosen):
        _, creds = keyward.api("GET", f"/users/{user['id']}/credentials")
        automated = [c for c in creds["items"] if c["via"] == "automated" and c["rp_id"] == MS_RP]
        assert len(automated) == 1, (user["upn"], creds)
        answer = user_sign_in_at_simulator(keyward, sim, user, tmp_path / f"user-{i}")
        assert answer["result"] == "success", answer
        assert answer["signCount"] >= 1
    assert not page.errors, page.errors


def test_a_fault_fails_a_user_with_its_reason_and_retry_fixes_it(browser, keyward, sim, screenshot_dir):
    status, listed = keyward.api("GET", "/users?source=entra&limit=200")
    assert status == 200
    pending = [u for u in listed["items"] if u["upn"] != CONSENTING_ADMIN and not u["key_id"]]
    if not pending:
        pytest.skip("needs the import of the first scenario")
    user = pending[0]
    page = sign_in(browser, keyward, "admin")
    page.goto("/users?source=entra")
    expect(rows(page)).to_have_count(SIM_USERS)
    page.locator(f"#users-table tbody tr[data-id='{user['id']}'] input[type=checkbox]").check()
    expect(page.locator("#selected-count")).to_have_text("1 selected")

    # The simulated tenant refuses the app every call (as a revoked admin consent would).
    assert http("POST", f"{sim}/_sim/faults", {"forbid": True})[0] == 204
    try:
        submit_provisioning(page)
        counts = page.locator("#job-counts")
        expect(counts).to_have_text("failed: 1 of 1 processed, 0 succeeded, 1 failed", timeout=90_000)
        failed = page.locator("#job-items tbody tr[data-state=failed]")
        expect(failed).to_have_count(1)
        reason = failed.locator("td").nth(2)
        expect(reason).to_contain_text(re.compile("privilege|permission|denied|403", re.I))
        page.screenshot(path=str(screenshot_dir / "scenario-provisioning-failed.png"), full_page=True)
    finally:
        assert http("POST", f"{sim}/_sim/faults", {"forbid": False})[0] == 204

    # The retried registration carries packed attestation from the organisation's own CA
    # (Settings), which the simulated Entra verifies before it accepts the passkey.
    status, saved = keyward.api("PUT", "/settings", {"attestation": "packed"})
    assert status == 200 and saved["attestation_ca_pem"], saved
    page.get_by_role("button", name="Retry failed").click()
    expect(page.locator("#job-counts")).to_have_text("done: 1 of 1 processed, 1 succeeded, 0 failed",
                                                     timeout=90_000)
    expect(page.locator("#job-items tbody tr[data-state=failed]")).to_have_count(0)
    _, creds = keyward.api("GET", f"/users/{user['id']}/credentials")
    assert [c["via"] for c in creds["items"] if c["rp_id"] == MS_RP] == ["automated"], creds
    status, audit = keyward.api("GET", "/audit?action=settings.update")
    assert audit["items"][0]["detail"]["changed"]["attestation"] == {"from": "none", "to": "packed"}
    assert keyward.api("PUT", "/settings", {"attestation": "none"})[0] == 200
    assert not page.errors, page.errors


def test_connect_register_and_disconnect_with_a_pairing_tool(browser, keyward, tmp_path, screenshot_dir):
    from fido2.client import DefaultClientDataCollector, Fido2Client
    from fido2.ctap import CtapError
    from fido2.ctap2 import Ctap2
    from fido2.server import Fido2Server
    from fido2.webauthn import PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity
    from udp_hid import open_device

    status, user = keyward.api("POST", "/users", {"upn": "dana@scenario.test", "display_name": "Dana Delegate"})
    assert status == 201, user
    status, _ = keyward.api("POST", f"/users/{user['id']}/key", {})
    assert status == 201
    # The organisation allows delegated sessions of 2 minutes (Settings); Connect must honour it.
    status, saved = keyward.api("PUT", "/settings", {"delegated_session_minutes": 2})
    assert status == 200, saved

    # The admin's own pairing tool, logged in with an API token of theirs, online.
    token = run_cli(keyward.binary, keyward.env, "token", "create", "--email", email_of("admin"),
                    "--name", "pairing tool")
    tool = PairTool(tmp_path / "pair-admin", keyward.url)
    done = tool.cmd("login", "--server", keyward.url, "--token-stdin", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    tool.run()
    try:
        tool.wait_for("connected as admin", timeout=10)
        page = sign_in(browser, keyward, "admin")
        page.goto(f"/users/{user['id']}")
        expect(page.get_by_role("heading", level=1)).to_have_text("User details: Dana Delegate")
        expect(page.locator("#pair-state")).to_have_attribute("data-online", "true", timeout=20_000)
        expect(page.locator("#pair-state")).to_contain_text("is online")
        # No key on the PC before Connect.
        with pytest.raises(CtapError):
            Ctap2(open_device(tool.address))

        page.get_by_role("button", name="Connect to register passkeys").click()
        expect(page.locator("#connect-state")).to_contain_text("Connected")
        tool.wait_for("connected (Delegated", timeout=1.0)
        page.screenshot(path=str(screenshot_dir / "scenario-connected.png"), full_page=True)
        status, audit = keyward.api("GET", f"/audit?action=relay.connect&user_id={user['id']}")
        assert status == 200 and audit["items"], audit
        entry = audit["items"][0]
        length = (datetime.fromisoformat(entry["detail"]["expires_at"].replace("Z", "+00:00"))
                  - datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))).total_seconds()
        assert 110 <= length <= 125, f"a 2-minute session lasts {length} s"

        rp = Fido2Server(PublicKeyCredentialRpEntity(id="example.com", name="Example"), attestation="direct")
        options, state = rp.register_begin(
            PublicKeyCredentialUserEntity(id=b"dana", name="dana@example.com", display_name="Dana"),
            user_verification="discouraged",
        )
        client = Fido2Client(open_device(tool.address),
                             client_data_collector=DefaultClientDataCollector("https://example.com"))
        auth_data = rp.register_complete(state, client.make_credential(options.public_key))
        assert auth_data.credential_data is not None

        # The credential shows on the user's page: created by this admin, through a delegated session.
        page.reload()
        cred = page.locator("#credentials tbody tr").filter(has_text="example.com")
        expect(cred).to_have_count(1)
        expect(cred).to_contain_text(email_of("admin"))
        expect(cred).to_contain_text("delegated")

        lines_before = len(tool.lines)
        page.get_by_role("button", name="Disconnect").click()
        expect(page.get_by_role("button", name="Connect to register passkeys")).to_be_visible()
        started = time.monotonic()
        while not any("key disconnected" in line for line in tool.lines[lines_before:]):
            assert time.monotonic() - started < 1.0, f"the key stayed after Disconnect: {tool.lines}"
            time.sleep(0.02)
        with pytest.raises(CtapError) as gone:
            Ctap2(open_device(tool.address))
        assert gone.value.code == CtapError.ERR.NOT_ALLOWED
        assert not page.errors, page.errors
    finally:
        tool.stop()
