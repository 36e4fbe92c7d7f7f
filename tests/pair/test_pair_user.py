"""User mode: alice activates her own `keyward-pair` and uses her key like a hardware key — sets a
PIN, registers at an RP with user verification and signs in (the default policy, not
registration-only)."""

from __future__ import annotations

import pytest
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity

from udp_hid import open_device

PIN = "correct horse 42"


class PinInteraction(UserInteraction):
    def request_pin(self, permissions, rp_id):
        return PIN

    def request_uv(self, permissions, rp_id):
        return True


def register(user_tool):
    ctap2 = Ctap2(open_device(user_tool.address))
    assert ctap2.info.options.get("clientPin") is False, ctap2.info.options
    ClientPin(ctap2).set_pin(PIN)

    rp = Fido2Server(PublicKeyCredentialRpEntity(id="example.org", name="Example"))
    client = Fido2Client(open_device(user_tool.address),
                         client_data_collector=DefaultClientDataCollector("https://example.org"),
                         user_interaction=PinInteraction())
    options, state = rp.register_begin(
        PublicKeyCredentialUserEntity(id=b"alice", name="alice@pairco.test", display_name="Alice"),
        user_verification="required",
    )
    auth_data = rp.register_complete(state, client.make_credential(options.public_key))
    assert auth_data.is_user_verified()
    return rp, client, auth_data


def test_user_sets_pin_and_registers_with_uv(user_tool):
    register(user_tool)


def test_user_signs_in_with_pin(user_tool):
    rp, client, auth_data = register(user_tool)
    options, state = rp.authenticate_begin([auth_data.credential_data], user_verification="required")
    result = client.get_assertion(options.public_key).get_response(0)
    verified = rp.authenticate_complete(state, [auth_data.credential_data], result)
    assert verified is not None
    assert result.response.authenticator_data.is_user_verified()
    assert result.response.authenticator_data.counter > auth_data.counter
