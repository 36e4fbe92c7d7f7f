"""credentialManagement, authenticatorConfig and the extensions that depend on them
(credProtect, credBlob, minPinLength), through python-fido2's CredentialManagement and Config."""

from __future__ import annotations

from fido2.ctap2 import Ctap2
from fido2.ctap2.config import Config
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin
from fido2.webauthn import PublicKeyCredentialDescriptor, PublicKeyCredentialUserEntity

from ctaphelp import (
    ERR, PIN, RP, descriptor, expect_error, get_assertion, make_credential, rp_id_hash, set_pin, token, user,
)

P = ClientPin.PERMISSION
R = CredentialManagement.RESULT


def credman(ctap: Ctap2) -> CredentialManagement:
    protocol, tok = token(ctap, P.CREDENTIAL_MGMT)
    return CredentialManagement(ctap, protocol, tok)


def config(ctap: Ctap2, pin: str = PIN) -> Config:
    protocol, tok = token(ctap, P.AUTHENTICATOR_CFG, pin=pin)
    return Config(ctap, protocol, tok)


def with_pin_and_credentials(ctap: Ctap2) -> dict:
    set_pin(ctap)
    made = {}
    for rp_id, n in (("example.com", 1), ("example.com", 2), ("other.example", 3)):
        rp = {"id": rp_id, "name": rp_id}
        response, _ = make_credential(ctap, rk=True, n=n, rp=rp, uv_token=token(ctap, P.MAKE_CREDENTIAL, rp_id))
        made[(rp_id, n)] = response
    make_credential(ctap, n=9)  # non-discoverable: invisible to credential management
    return made


def test_metadata_and_enumeration(ctap2: Ctap2):
    made = with_pin_and_credentials(ctap2)
    cm = credman(ctap2)
    metadata = cm.get_metadata()
    assert metadata[R.EXISTING_CRED_COUNT] == 3
    assert metadata[R.MAX_REMAINING_COUNT] == ctap2.get_info().remaining_disc_creds
    rps = cm.enumerate_rps()
    assert {rp[R.RP]["id"] for rp in rps} == {"example.com", "other.example"}
    assert {rp[R.RP_ID_HASH] for rp in rps} == {rp_id_hash("example.com"), rp_id_hash("other.example")}
    creds = cm.enumerate_creds(rp_id_hash("example.com"))
    assert len(creds) == 2
    ids = {c[R.CREDENTIAL_ID]["id"] for c in creds}
    assert ids == {made[("example.com", n)].auth_data.credential_data.credential_id for n in (1, 2)}
    for c in creds:
        assert c[R.USER]["name"] in (user(1)["name"], user(2)["name"])
        assert c[R.PUBLIC_KEY][3] == -7
        assert c[R.CRED_PROTECT] == 1


def test_enumerate_credentials_of_an_unknown_rp(ctap2: Ctap2):
    with_pin_and_credentials(ctap2)
    # enumerate_creds() turns NO_CREDENTIALS into an empty list; the Begin call shows the code.
    expect_error(ERR.NO_CREDENTIALS, credman(ctap2).enumerate_creds_begin, rp_id_hash("nobody.example"))
    assert credman(ctap2).enumerate_creds(rp_id_hash("nobody.example")) == []


def test_delete_and_update_user(ctap2: Ctap2):
    made = with_pin_and_credentials(ctap2)
    cm = credman(ctap2)
    target = made[("example.com", 1)]
    cred_id = target.auth_data.credential_data.credential_id
    new_user = PublicKeyCredentialUserEntity(id=user(1)["id"], name="renamed@example.com", display_name="Renamed")
    cm.update_user_info(PublicKeyCredentialDescriptor(type="public-key", id=cred_id), new_user)
    names = {c[R.USER].get("name") for c in cm.enumerate_creds(rp_id_hash("example.com"))}
    assert "renamed@example.com" in names

    cm.delete_cred(PublicKeyCredentialDescriptor(type="public-key", id=cred_id))
    assert cm.get_metadata()[R.EXISTING_CRED_COUNT] == 2
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2, [descriptor(target)])
    expect_error(ERR.NO_CREDENTIALS, cm.delete_cred, PublicKeyCredentialDescriptor(type="public-key", id=cred_id))


def test_credential_management_needs_the_cm_permission(ctap2: Ctap2):
    with_pin_and_credentials(ctap2)
    protocol, tok = token(ctap2, P.MAKE_CREDENTIAL, "example.com")
    expect_error(ERR.PIN_AUTH_INVALID, CredentialManagement(ctap2, protocol, tok).get_metadata)
    expect_error(ERR.PIN_AUTH_INVALID, CredentialManagement(ctap2, protocol, b"\x01" * 32).get_metadata)


def test_cred_protect_3_needs_uv_even_with_an_allow_list(ctap2: Ctap2):
    set_pin(ctap2)
    uv = token(ctap2, P.MAKE_CREDENTIAL, "example.com")
    made, _ = make_credential(ctap2, rk=True, extensions={"credProtect": 3}, uv_token=uv)
    assert made.auth_data.extensions["credProtect"] == 3
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2)
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2, [descriptor(made)])
    assertion, _ = get_assertion(ctap2, uv_token=token(ctap2, P.GET_ASSERTION, "example.com"))
    assert assertion.credential["id"] == made.auth_data.credential_data.credential_id


def test_cred_protect_2_hides_only_from_discovery(ctap2: Ctap2):
    made, _ = make_credential(ctap2, rk=True, extensions={"credProtect": 2})
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2)
    assertion, _ = get_assertion(ctap2, [descriptor(made)])
    assert assertion.credential["id"] == made.auth_data.credential_data.credential_id


def test_cred_blob_round_trip(ctap2: Ctap2):
    made, _ = make_credential(ctap2, rk=True, extensions={"credBlob": b"keyward blob"})
    assert made.auth_data.extensions["credBlob"] is True
    assertion, _ = get_assertion(ctap2, extensions={"credBlob": True})
    assert assertion.auth_data.extensions["credBlob"] == b"keyward blob"
    other, _ = make_credential(ctap2, rk=True, n=2, rp={"id": "b.example", "name": "B"})
    assertion, _ = get_assertion(ctap2, extensions={"credBlob": True}, rp_id="b.example")
    assert assertion.auth_data.extensions["credBlob"] == b""


def test_set_min_pin_length_forces_a_pin_change(ctap2: Ctap2):
    set_pin(ctap2, "1234")
    config(ctap2, pin="1234").set_min_pin_length(6)
    info = ctap2.get_info()
    assert info.min_pin_length == 6
    assert info.force_pin_change is True, "the current PIN is now too short"
    expect_error(ERR.PIN_POLICY_VIOLATION, ClientPin(ctap2).get_pin_token, "1234", P.MAKE_CREDENTIAL, "example.com")
    expect_error(ERR.PIN_POLICY_VIOLATION, ClientPin(ctap2).change_pin, "1234", "12345")
    ClientPin(ctap2).change_pin("1234", "123456")
    assert ctap2.get_info().force_pin_change is False
    token(ctap2, P.MAKE_CREDENTIAL, "example.com", pin="123456")
    # The minimum never goes down (except by reset).
    cfg = Config(ctap2, *token(ctap2, P.AUTHENTICATOR_CFG, pin="123456"))
    expect_error(ERR.PIN_POLICY_VIOLATION, cfg.set_min_pin_length, 4)


def test_force_change_pin(ctap2: Ctap2):
    set_pin(ctap2)
    config(ctap2).set_min_pin_length(force_change_pin=True)
    assert ctap2.get_info().force_pin_change is True
    expect_error(ERR.PIN_POLICY_VIOLATION, ClientPin(ctap2).get_pin_token, PIN, P.MAKE_CREDENTIAL, "example.com")
    ClientPin(ctap2).change_pin(PIN, "87654321")
    assert ctap2.get_info().force_pin_change is False


def test_min_pin_length_extension_only_for_listed_rps(ctap2: Ctap2):
    set_pin(ctap2)
    config(ctap2).set_min_pin_length(rp_ids=["example.com"])
    listed, _ = make_credential(ctap2, extensions={"minPinLength": True})
    assert listed.auth_data.extensions["minPinLength"] == 4
    other = {"id": "other.example", "name": "Other"}
    unlisted, _ = make_credential(ctap2, rp=other, extensions={"minPinLength": True})
    assert "minPinLength" not in (unlisted.auth_data.extensions or {})


def test_toggle_always_uv(ctap2: Ctap2):
    set_pin(ctap2)
    made, _ = make_credential(ctap2)
    config(ctap2).toggle_always_uv()
    info = ctap2.get_info()
    assert info.options.get("alwaysUv") is True
    assert info.options.get("makeCredUvNotRqd") is not True
    expect_error(ERR.PUAT_REQUIRED, make_credential, ctap2)
    config(ctap2).toggle_always_uv()
    assert ctap2.get_info().options.get("alwaysUv") is False
    make_credential(ctap2)


def test_config_needs_the_acfg_permission(ctap2: Ctap2):
    set_pin(ctap2)
    protocol, tok = token(ctap2, P.MAKE_CREDENTIAL, "example.com")
    expect_error(ERR.PIN_AUTH_INVALID, Config(ctap2, protocol, tok).toggle_always_uv)
    # With a PIN set, config without any pinUvAuthParam is refused.
    expect_error(ERR.PUAT_REQUIRED, Config(ctap2).toggle_always_uv)


def test_reset_clears_pin_and_configuration(softkey):
    ctap = softkey.ctap2()
    with_pin_and_credentials(ctap)
    config(ctap).set_min_pin_length(8)
    softkey.restart()
    ctap = softkey.ctap2()
    ctap.reset()
    info = ctap.get_info()
    assert info.options["clientPin"] is False
    assert info.min_pin_length == 4
    assert RP["id"]  # the default RP is unaffected by configuration
