"""Admin one-time PIN through the user's own tool (issue 5, user mode: "PIN set and change through
the tool, forcePINChange honoured").

The admin sets a one-time PIN on alice's key through the API (`POST /keys/{id}/pin`, the
helpdesk's forgotten-PIN path). Alice's activated `keyward-pair run --udp` then shows a key that
python-fido2 sees as demanding a PIN change: getInfo reports forcePINChange, a PIN token with the
one-time PIN is refused with PIN_POLICY_VIOLATION, `ClientPin.change_pin` succeeds, and with her
new PIN alice registers and signs in at a python-fido2 RP with user verification. The one-time PIN
no longer works.
"""

from __future__ import annotations

import pytest
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity

from udp_hid import open_device

NEW_PIN = "alice's own 2026"
RP_ID = "example.org"


class PinInteraction(UserInteraction):
    def request_pin(self, permissions, rp_id):
        return NEW_PIN

    def request_uv(self, permissions, rp_id):
        return True


def key_of(api, user) -> str:
    status, current = api.call("GET", f"/users/{user['id']}")
    assert status == 200 and current["key_id"], current
    return current["key_id"]


def token_error(ctap2: Ctap2, pin: str) -> CtapError.ERR:
    with pytest.raises(CtapError) as refused:
        ClientPin(ctap2).get_pin_token(pin, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)
    return refused.value.code


def test_one_time_pin_is_changed_through_the_tool_then_used_at_an_rp(keyward, user_tool):
    _, api, _, user = keyward
    key_id = key_of(api, user)
    status, answer = api.call("POST", f"/keys/{key_id}/pin")
    assert status == 200, answer
    one_time = answer["one_time_pin"]
    assert answer["force_pin_change"] is True and len(one_time) >= 8 and one_time.isdigit()

    ctap2 = Ctap2(open_device(user_tool.address))
    info = ctap2.get_info()
    assert info.options.get("clientPin") is True, info.options
    assert info.force_pin_change is True, "getInfo must report forcePINChange"
    # The one-time PIN is the right PIN, but the key will not verify alice with it.
    assert token_error(ctap2, one_time) == CtapError.ERR.PIN_POLICY_VIOLATION

    ClientPin(ctap2).change_pin(one_time, NEW_PIN)
    assert ctap2.get_info().force_pin_change is False
    assert ClientPin(ctap2).get_pin_token(NEW_PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)

    # Alice registers and signs in at a relying party with user verification by her new PIN.
    rp = Fido2Server(PublicKeyCredentialRpEntity(id=RP_ID, name="Example"))
    client = Fido2Client(open_device(user_tool.address),
                         client_data_collector=DefaultClientDataCollector(f"https://{RP_ID}"),
                         user_interaction=PinInteraction())
    options, state = rp.register_begin(
        PublicKeyCredentialUserEntity(id=b"alice", name="alice@pairco.test", display_name="Alice"),
        user_verification="required",
    )
    auth_data = rp.register_complete(state, client.make_credential(options.public_key))
    assert auth_data.is_user_verified()
    options, state = rp.authenticate_begin([auth_data.credential_data], user_verification="required")
    result = client.get_assertion(options.public_key).get_response(0)
    assert rp.authenticate_complete(state, [auth_data.credential_data], result) is not None
    assert result.response.authenticator_data.is_user_verified()

    # The one-time PIN is gone for good.
    assert token_error(Ctap2(open_device(user_tool.address)), one_time) == CtapError.ERR.PIN_INVALID

    # The admin's view: the key no longer demands a change, and the audit log says who set the
    # one-time PIN (never the PIN itself).
    status, key = api.call("GET", f"/keys/{key_id}")
    assert status == 200 and key["pin_set"] and not key["force_pin_change"], key
    status, audit = api.call("GET", "/audit?action=key.pin_set")
    assert status == 200 and audit["items"], audit
    entry = audit["items"][0]
    assert entry["actor"].endswith("admin@pairco.test") and entry["detail"]["force_change"] is True
    assert one_time not in str(audit)


def test_helpdesk_unblocks_a_forgotten_pin_and_the_passkeys_stay(keyward, user_tool):
    """Alice set her own PIN, forgot it and blocked the key with wrong guesses; a one-time PIN
    from the admin unblocks it, and her existing passkey still signs in after she changes it."""
    _, api, _, user = keyward
    ctap2 = Ctap2(open_device(user_tool.address))
    ClientPin(ctap2).set_pin("forgotten pin 1")
    rp = Fido2Server(PublicKeyCredentialRpEntity(id=RP_ID, name="Example"))

    class Forgotten(UserInteraction):
        def request_pin(self, permissions, rp_id):
            return "forgotten pin 1"

        def request_uv(self, permissions, rp_id):
            return True

    client = Fido2Client(open_device(user_tool.address),
                         client_data_collector=DefaultClientDataCollector(f"https://{RP_ID}"),
                         user_interaction=Forgotten())
    options, state = rp.register_begin(
        PublicKeyCredentialUserEntity(id=b"alice", name="alice@pairco.test", display_name="Alice"),
        user_verification="required",
    )
    auth_data = rp.register_complete(state, client.make_credential(options.public_key))

    # Three wrong guesses: the key is soft-blocked, even for the right PIN.
    for expected in (CtapError.ERR.PIN_INVALID, CtapError.ERR.PIN_INVALID, CtapError.ERR.PIN_AUTH_BLOCKED):
        assert token_error(ctap2, "not my pin") == expected
    assert token_error(ctap2, "forgotten pin 1") == CtapError.ERR.PIN_AUTH_BLOCKED

    status, answer = api.call("POST", f"/keys/{key_of(api, user)}/pin")
    assert status == 200, answer
    assert answer["pin_retries"] == 8
    ctap2 = Ctap2(open_device(user_tool.address))
    assert token_error(ctap2, answer["one_time_pin"]) == CtapError.ERR.PIN_POLICY_VIOLATION
    ClientPin(ctap2).change_pin(answer["one_time_pin"], NEW_PIN)

    client = Fido2Client(open_device(user_tool.address),
                         client_data_collector=DefaultClientDataCollector(f"https://{RP_ID}"),
                         user_interaction=PinInteraction())
    options, state = rp.authenticate_begin([auth_data.credential_data], user_verification="required")
    result = client.get_assertion(options.public_key).get_response(0)
    assert rp.authenticate_complete(state, [auth_data.credential_data], result) is not None
    assert result.response.authenticator_data.is_user_verified()
