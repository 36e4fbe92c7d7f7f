"""clientPIN (protocols 1 and 2): set/change PIN, tokens and permissions, retries, the
three-strikes block and its end at power cycle (restart), the permanent block after eight."""

from __future__ import annotations

import pytest
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2

from ctaphelp import ERR, PIN, expect_error, get_assertion, make_credential, set_pin, token, user

MC, GA = ClientPin.PERMISSION.MAKE_CREDENTIAL, ClientPin.PERMISSION.GET_ASSERTION
FLAG_UV = 0x04


def wrong_pin(ctap: Ctap2, code: int) -> None:
    expect_error(code, ClientPin(ctap).get_pin_token, "00000000", MC, "example.com")


def retries(ctap: Ctap2) -> int:
    return ClientPin(ctap).get_pin_retries()[0]


def test_set_pin_changes_get_info_and_enables_uv(ctap2: Ctap2):
    assert ctap2.get_info().options["clientPin"] is False
    expect_error(ERR.PIN_NOT_SET, ClientPin(ctap2).get_pin_token, PIN, MC, "example.com")
    set_pin(ctap2)
    assert ctap2.get_info().options["clientPin"] is True
    assert retries(ctap2) == 8
    expect_error(ERR.NOT_ALLOWED, set_pin, ctap2, "87654321")

    response, _ = make_credential(ctap2, rk=True, uv_token=token(ctap2, MC, "example.com"))
    assert response.auth_data.flags & FLAG_UV
    assertion, _ = get_assertion(ctap2, uv_token=token(ctap2, GA, "example.com"))
    assert assertion.auth_data.flags & FLAG_UV


@pytest.mark.parametrize("protocol", [PinProtocolV1, PinProtocolV2])
def test_both_pin_protocols(ctap2: Ctap2, protocol):
    ClientPin(ctap2, protocol()).set_pin(PIN)
    uv = token(ctap2, MC, "example.com", protocol=protocol())
    response, _ = make_credential(ctap2, uv_token=uv)
    assert response.auth_data.flags & FLAG_UV


def raw_set_pin(ctap: Ctap2, pin: bytes) -> None:
    """setPIN without python-fido2's client-side length check, to reach the key's own."""
    protocol = PinProtocolV2()
    client_pin = ClientPin(ctap, protocol)
    key_agreement, shared = client_pin._get_shared_secret()
    new_pin_enc = protocol.encrypt(shared, pin.ljust(64, b"\0"))
    ctap.client_pin(
        protocol.VERSION, ClientPin.CMD.SET_PIN, key_agreement=key_agreement,
        new_pin_enc=new_pin_enc, pin_uv_param=protocol.authenticate(shared, new_pin_enc),
    )


def test_short_pins_are_refused(ctap2: Ctap2):
    expect_error(ERR.PIN_POLICY_VIOLATION, raw_set_pin, ctap2, b"123")
    # Four code points, even if more bytes: "ééé" is three code points in six bytes.
    expect_error(ERR.PIN_POLICY_VIOLATION, raw_set_pin, ctap2, "ééé".encode())
    raw_set_pin(ctap2, b"1234")
    assert ctap2.get_info().options["clientPin"] is True


def test_change_pin(ctap2: Ctap2):
    set_pin(ctap2)
    expect_error(ERR.PIN_INVALID, ClientPin(ctap2).change_pin, "99999999", "abcdefgh")
    ClientPin(ctap2).change_pin(PIN, "abcdefgh")
    token(ctap2, MC, "example.com", pin="abcdefgh")
    wrong_pin(ctap2, ERR.PIN_INVALID)


def test_wrong_pin_auth_param_and_wrong_permission(ctap2: Ctap2):
    set_pin(ctap2)
    protocol, tok = token(ctap2, GA, "example.com")
    # A token without the mc permission cannot register.
    expect_error(ERR.PIN_AUTH_INVALID, make_credential, ctap2, uv_token=(protocol, tok))
    # A wrong pinUvAuthParam.
    expect_error(ERR.PIN_AUTH_INVALID, make_credential, ctap2, uv_token=(protocol, b"\x00" * 32))
    # A token bound to another RP.
    other = token(ctap2, MC, "other.example")
    expect_error(ERR.PIN_AUTH_INVALID, make_credential, ctap2, uv_token=other)


def test_resident_credential_needs_uv_once_a_pin_is_set(ctap2: Ctap2):
    set_pin(ctap2)
    # makeCredUvNotRqd: a non-resident credential may still be made without UV...
    make_credential(ctap2)
    # ...but a discoverable one needs a pinUvAuthToken.
    expect_error(ERR.PUAT_REQUIRED, make_credential, ctap2, rk=True)


def test_wrong_pins_decrement_retries_and_persist(softkey):
    ctap = softkey.ctap2()
    set_pin(ctap)
    wrong_pin(ctap, ERR.PIN_INVALID)
    wrong_pin(ctap, ERR.PIN_INVALID)
    assert retries(ctap) == 6
    softkey.restart()
    ctap = softkey.ctap2()
    assert retries(ctap) == 6, "retries survive a restart"
    token(ctap, MC, "example.com")
    assert retries(ctap) == 8, "a correct PIN restores them"


def test_three_wrong_pins_block_until_power_cycle(softkey):
    ctap = softkey.ctap2()
    set_pin(ctap)
    wrong_pin(ctap, ERR.PIN_INVALID)
    wrong_pin(ctap, ERR.PIN_INVALID)
    wrong_pin(ctap, ERR.PIN_AUTH_BLOCKED)
    # Even the right PIN is refused now, without spending a retry.
    expect_error(ERR.PIN_AUTH_BLOCKED, ClientPin(ctap).get_pin_token, PIN, MC, "example.com")
    assert retries(ctap) == 5
    softkey.restart()
    ctap = softkey.ctap2()
    token(ctap, MC, "example.com")
    assert retries(ctap) == 8


def test_eight_wrong_pins_block_the_pin_for_good(softkey):
    ctap = softkey.ctap2()
    set_pin(ctap)
    for attempt in range(1, 9):
        if attempt in (4, 7):
            softkey.restart()  # lift the three-strikes block to keep guessing
            ctap = softkey.ctap2()
        if attempt == 8:
            wrong_pin(ctap, ERR.PIN_BLOCKED)
        elif attempt % 3 == 0:
            wrong_pin(ctap, ERR.PIN_AUTH_BLOCKED)
        else:
            wrong_pin(ctap, ERR.PIN_INVALID)
    softkey.restart()
    ctap = softkey.ctap2()
    assert retries(ctap) == 0
    expect_error(ERR.PIN_BLOCKED, ClientPin(ctap).get_pin_token, PIN, MC, "example.com")
    # Only a reset (just after power-up) brings the key back.
    ctap.reset()
    assert ctap.get_info().options["clientPin"] is False


def test_user_details_are_returned_after_uv(ctap2: Ctap2):
    set_pin(ctap2)
    for n in (1, 2):
        make_credential(ctap2, rk=True, n=n, uv_token=token(ctap2, MC, "example.com"))
    first, _ = get_assertion(ctap2, uv_token=token(ctap2, GA, "example.com"))
    assert first.number_of_credentials == 2
    second = ctap2.get_next_assertion()
    names = {a.user.get("name") for a in (first, second)}
    assert names == {user(1)["name"], user(2)["name"]}


def test_legacy_pin_token_without_permissions(ctap2: Ctap2):
    set_pin(ctap2)
    protocol = PinProtocolV2()
    legacy = ClientPin(ctap2, protocol).get_pin_token(PIN)  # subcommand 0x05
    response, _ = make_credential(ctap2, uv_token=(protocol, legacy))
    assert response.auth_data.flags & FLAG_UV


def test_unknown_client_pin_subcommand(ctap2: Ctap2):
    expect_error(ERR.INVALID_SUBCOMMAND, ctap2.client_pin, 2, 0x42)


def test_silent_assertion_does_not_use_up_the_token(ctap2: Ctap2):
    # Browsers (and python-fido2's client) pre-flight the allow list with up=false and the same
    # token before the real getAssertion. CTAP 2.1 §6.2.2 clears the token's permissions only
    # once user presence was collected, so the second call must still be authorised.
    set_pin(ctap2)
    made, _ = make_credential(ctap2, uv_token=token(ctap2, MC, "example.com"))
    uv = token(ctap2, GA, "example.com")
    allow = [{"type": "public-key", "id": made.auth_data.credential_data.credential_id}]
    get_assertion(ctap2, allow, options={"up": False}, uv_token=uv)
    assertion, _ = get_assertion(ctap2, allow, uv_token=uv)
    assert assertion.auth_data.flags & FLAG_UV
    # After an assertion with user presence the permissions are spent.
    expect_error(ERR.PIN_AUTH_INVALID, get_assertion, ctap2, allow, uv_token=uv)
