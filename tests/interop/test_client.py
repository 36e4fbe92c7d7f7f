"""End to end as a browser would do it: python-fido2's Fido2Client drives the softkey and its
Fido2Server verifies every registration (packed attestation, trusting the softkey's CA) and
every assertion (signature, counter, flags)."""

from __future__ import annotations

import os

from fido2.attestation import AttestationVerifier
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity

from ctaphelp import PIN

ORIGIN = "https://example.com"
RP_ENTITY = PublicKeyCredentialRpEntity(id="example.com", name="Example")


class TrustSoftkeyCa(AttestationVerifier):
    def __init__(self, ca_der: bytes):
        super().__init__()
        self.ca_der = ca_der

    def ca_lookup(self, attestation_result, auth_data):
        return self.ca_der


class PinInteraction(UserInteraction):
    def __init__(self, pin: str | None):
        self.pin = pin

    def request_pin(self, permissions, rp_id):
        return self.pin


def client(softkey, pin: str | None = None) -> Fido2Client:
    return Fido2Client(
        softkey.device(),
        client_data_collector=DefaultClientDataCollector(ORIGIN),
        user_interaction=PinInteraction(pin),
    )


def server(softkey, verify_attestation: bool = True) -> Fido2Server:
    """A relying party; with `verify_attestation` it demands packed attestation chaining to the
    softkey's CA. Tests about other features leave it off so that they test one thing each."""
    if not verify_attestation:
        return Fido2Server(RP_ENTITY, attestation="none")
    return Fido2Server(RP_ENTITY, attestation="direct", verify_attestation=TrustSoftkeyCa(softkey.ca_der()))


def user_entity(n: int = 1) -> PublicKeyCredentialUserEntity:
    return PublicKeyCredentialUserEntity(id=bytes([n]) * 16, name=f"user{n}", display_name=f"User {n}")


def register(softkey, fido_client, srv, **kwargs):
    # python-fido2 treats "preferred" UV on a key with an unset PIN as a configuration error
    # (a browser would ask the user to set one), so tests without a PIN discourage UV.
    kwargs.setdefault("user_verification", "discouraged")
    options, state = srv.register_begin(user_entity(kwargs.pop("n", 1)), **kwargs)
    result = fido_client.make_credential(options.public_key)
    auth_data = srv.register_complete(state, result)
    return auth_data.credential_data, result


def authenticate(fido_client, srv, credentials, **kwargs):
    kwargs.setdefault("user_verification", "discouraged")
    options, state = srv.authenticate_begin(credentials, **kwargs)
    selection = fido_client.get_assertion(options.public_key)
    response = selection.get_response(0)
    srv.authenticate_complete(state, credentials, response)
    return response


def test_register_and_authenticate_with_verified_attestation(softkey):
    srv, fido_client = server(softkey), client(softkey)
    credential, _ = register(softkey, fido_client, srv)
    first = authenticate(fido_client, srv, [credential])
    second = authenticate(fido_client, srv, [credential])
    assert second.response.authenticator_data.counter > first.response.authenticator_data.counter


def test_discoverable_credential_with_pin_and_required_uv(softkey):
    fido_client, srv = client(softkey, PIN), server(softkey, verify_attestation=False)
    from fido2.ctap2.pin import ClientPin
    from fido2.ctap2 import Ctap2

    ClientPin(Ctap2(softkey.device())).set_pin(PIN)
    credential, _ = register(
        softkey, fido_client, srv, resident_key_requirement="required", user_verification="required",
    )
    # Discoverable: no allow list at all.
    response = authenticate(fido_client, srv, [credential], user_verification="required")
    assert response.response.authenticator_data.is_user_verified()
    assert response.response.user_handle == user_entity().id


def test_prf_hmac_secret_is_stable_per_credential_and_salt(softkey):
    fido_client, srv = client(softkey), server(softkey, verify_attestation=False)
    credential, result = register(softkey, fido_client, srv, extensions={"prf": {}})
    assert result.client_extension_results["prf"]["enabled"] is True
    salt_a, salt_b = os.urandom(32), os.urandom(32)

    def prf(first: bytes, second: bytes | None = None) -> dict:
        values = {"first": first} if second is None else {"first": first, "second": second}
        response = authenticate(fido_client, srv, [credential], extensions={"prf": {"eval": values}})
        return response.client_extension_results["prf"]["results"]

    one = prf(salt_a)
    assert prf(salt_a)["first"] == one["first"], "same salt, same secret"
    both = prf(salt_a, salt_b)
    assert both["first"] == one["first"] and both["second"] != one["first"]


def test_cred_blob_and_cred_protect_through_the_client(softkey):
    fido_client, srv = client(softkey), server(softkey, verify_attestation=False)
    credential, result = register(
        softkey, fido_client, srv, resident_key_requirement="required",
        extensions={"credBlob": b"hello", "credentialProtectionPolicy": "userVerificationOptionalWithCredentialIDList"},
    )
    # python-fido2 passes these through without client outputs: read the authenticator data.
    extensions = result.response.attestation_object.auth_data.extensions
    assert extensions["credBlob"] is True and extensions["credProtect"] == 2
    response = authenticate(fido_client, srv, [credential], extensions={"getCredBlob": True})
    assert response.response.authenticator_data.extensions["credBlob"] == b"hello"


def test_excluded_credential_through_the_client(softkey):
    from fido2.client import ClientError

    fido_client, srv = client(softkey), server(softkey, verify_attestation=False)
    credential, _ = register(softkey, fido_client, srv)
    options, _ = srv.register_begin(user_entity(), [credential], user_verification="discouraged")
    try:
        fido_client.make_credential(options.public_key)
    except ClientError as e:
        assert e.code == ClientError.ERR.DEVICE_INELIGIBLE
    else:
        raise AssertionError("an excluded credential must not be registered again")
