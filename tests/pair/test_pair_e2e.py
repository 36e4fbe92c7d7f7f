"""Connect to register passkeys, end to end: python-fido2's Fido2Client → `keyward-pair run --udp`
→ the relay → `keyward serve` → the user's key. The admin registers alice's key at a test RP
(verified by python-fido2's Fido2Server); the delegated session cannot sign in with it.
"""

from __future__ import annotations

import time

import pytest
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity

from udp_hid import open_device

RP = PublicKeyCredentialRpEntity(id="example.com", name="Example")
ORIGIN = "https://example.com"


def client_for(address) -> Fido2Client:
    return Fido2Client(open_device(address), client_data_collector=DefaultClientDataCollector(ORIGIN))


def test_no_key_until_connect(admin_tool):
    # Ctap2() sends getInfo: with no key connected the tool answers NOT_ALLOWED at once.
    with pytest.raises(CtapError) as e:
        Ctap2(open_device(admin_tool.address))
    assert e.value.code == CtapError.ERR.NOT_ALLOWED


def test_admin_registers_for_user_and_cannot_sign_in(keyward, admin_tool):
    server, api, _, user = keyward
    status, session = api.call("POST", f"/users/{user['id']}/connect")
    assert status == 201, session
    assert set(session) >= {"session_id", "expires_at"}
    admin_tool.wait_for("connected (Delegated", timeout=1.0)  # "within a second"

    rp = Fido2Server(RP, attestation="direct")
    uh = b"alice-handle"
    options, state = rp.register_begin(
        PublicKeyCredentialUserEntity(id=uh, name="alice@pairco.test", display_name="Alice"),
        user_verification="discouraged",
    )
    reg = client_for(admin_tool.address).make_credential(options.public_key)
    auth_data = rp.register_complete(state, reg)
    cred = auth_data.credential_data
    assert cred is not None

    # The credential is recorded as created through a delegated session, by the admin.
    status, creds = api.call("GET", f"/users/{user['id']}/credentials")
    assert status == 200, creds
    mine = [c for c in creds["items"] if c["rp_id"] == "example.com"]
    assert len(mine) == 1, creds
    assert mine[0]["via"] == "delegated"
    assert "admin@pairco.test" in (mine[0]["created_by"] or "")

    # Signing in through the delegated session is refused by the server.
    options, state = rp.authenticate_begin([cred], user_verification="discouraged")
    with pytest.raises(ClientError) as refused:
        client_for(admin_tool.address).get_assertion(options.public_key)
    cause = refused.value.cause
    assert isinstance(cause, CtapError), refused.value
    # The engine's registration-only policy, not a lost connection (NOT_ALLOWED would mean that).
    assert cause.code == CtapError.ERR.OPERATION_DENIED, cause

    # The audit log names the credential's RP.
    status, audit = api.call("GET", "/audit?action=relay.connect")
    assert status == 200 and audit["items"], audit


def test_disconnect_removes_the_key_within_a_second(keyward, admin_tool):
    server, api, _, user = keyward
    status, _ = api.call("POST", f"/users/{user['id']}/connect")
    assert status == 201
    admin_tool.wait_for("connected (Delegated", timeout=1.0)
    status, _ = api.call("DELETE", f"/users/{user['id']}/connect")
    assert status == 204
    admin_tool.wait_for("key disconnected", timeout=1.0)
    with pytest.raises(CtapError) as e:
        Ctap2(open_device(admin_tool.address))
    assert e.value.code == CtapError.ERR.NOT_ALLOWED


def test_connect_needs_the_admins_tool_online(keyward):
    server, api, _, user = keyward
    status, problem = api.call("POST", f"/users/{user['id']}/connect")
    assert status == 409, problem
    assert "keyward-pair" in problem["detail"]


def test_wrong_token_is_refused_clearly(keyward, new_tool):
    server, *_ = keyward
    tool = new_tool("bad")
    done = tool.cmd("login", "--server", server.base, "--token-stdin", stdin="kw_not_a_token\n")
    assert done.returncode != 0
    assert "API token" in done.stderr
    assert "kw_not_a_token" not in done.stderr


def test_relay_survives_a_server_restart(keyward, admin_tool):
    server, api, _, user = keyward
    server.stop()
    admin_tool.wait_for("retrying in", timeout=5.0)
    server.start()
    deadline = time.time() + 30
    while sum("connected as admin" in line for line in admin_tool.lines) < 2:
        assert time.time() < deadline, admin_tool.lines
        time.sleep(0.1)
    status, _ = api.call("POST", f"/users/{user['id']}/connect")
    assert status == 201
    admin_tool.wait_for("connected (Delegated", timeout=1.0)


def test_revoked_tool_stops_with_a_clear_message(keyward, admin_tool):
    server, api, _, user = keyward
    status, devices = api.call("GET", "/pair/devices")
    assert status == 200, devices
    online = [d for d in devices["items"] if d["online"]]
    assert len(online) == 1, devices
    status, _ = api.call("DELETE", f"/pair/devices/{online[0]['id']}")
    assert status == 204
    assert admin_tool.proc is not None
    admin_tool.proc.wait(timeout=5)
    assert admin_tool.proc.returncode != 0
    admin_tool.wait_for("keyward-pair login", timeout=2.0)
    # A revoked tool cannot be used to connect a key any more.
    status, problem = api.call("POST", f"/users/{user['id']}/connect")
    assert status == 409, problem


def test_logout_revokes_the_device_at_the_server(keyward, admin_tool):
    server, api, _, _ = keyward
    admin_tool.stop()
    done = admin_tool.cmd("logout")
    assert done.returncode == 0, done.stderr
    assert "revoked" in done.stdout
    status, devices = api.call("GET", "/pair/devices")
    assert status == 200 and devices["items"] == [], devices
    again = admin_tool.cmd("run", "--udp", "127.0.0.1:0")
    assert again.returncode != 0 and "not logged in" in again.stderr
