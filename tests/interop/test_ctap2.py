"""CTAP 2.1 commands through python-fido2's Ctap2 (strict CBOR): getInfo, makeCredential,
getAssertion/getNextAssertion, selection, reset, malformed requests, presence and restarts."""

from __future__ import annotations

import time

import pytest
from fido2.ctap2 import Ctap2

from ctaphelp import (
    EDDSA, ERR, ES256, RP, descriptor, encode, expect_error, get_assertion, make_credential, raw,
    rp_id_hash, status_of, user, verify_assertion, verify_packed,
)

FLAG_UP, FLAG_UV, FLAG_AT, FLAG_ED = 0x01, 0x04, 0x40, 0x80


def test_get_info_fields(make_softkey):
    key = make_softkey("--aaguid", "00112233445566778899aabbccddeeff")
    info = key.ctap2().info
    assert "FIDO_2_0" in info.versions and "FIDO_2_1" in info.versions
    assert "U2F_V2" not in info.versions
    assert bytes(info.aaguid).hex() == "00112233445566778899aabbccddeeff"
    for ext in ("credProtect", "hmac-secret", "credBlob", "minPinLength"):
        assert ext in info.extensions, ext
    options = info.options
    assert options.get("rk") is True and options.get("up") is True and options.get("plat") is False
    assert options.get("clientPin") is False, "no PIN yet"
    for option in ("credMgmt", "authnrCfg", "pinUvAuthToken", "setMinPINLength", "makeCredUvNotRqd"):
        assert options.get(option) is True, option
    assert "uv" not in options, "no built-in user verification"
    assert info.max_msg_size >= 1024
    assert 2 in info.pin_uv_protocols and 1 in info.pin_uv_protocols
    algs = {a["alg"] for a in info.algorithms}
    assert {-7, -8} <= algs
    assert info.max_cred_blob_length >= 32
    assert info.min_pin_length == 4
    assert info.force_pin_change is False
    assert info.remaining_disc_creds is not None and info.remaining_disc_creds > 0


def test_make_credential_es256_non_resident_with_packed_attestation(softkey, ctap2: Ctap2):
    response, h = make_credential(ctap2)
    auth = response.auth_data
    assert auth.rp_id_hash == rp_id_hash()
    assert auth.flags & FLAG_UP and auth.flags & FLAG_AT and not auth.flags & FLAG_UV
    assert auth.credential_data.aaguid == ctap2.info.aaguid
    assert auth.credential_data.public_key[3] == -7
    verify_packed(response, h, softkey.ca_der())

    assertion, h2 = get_assertion(ctap2, [descriptor(response)])
    data = verify_assertion(assertion, h2, response)
    assert data.flags & FLAG_UP and not data.flags & FLAG_UV
    assert data.counter > auth.counter
    second, h3 = get_assertion(ctap2, [descriptor(response)])
    assert verify_assertion(second, h3, response).counter > data.counter


def test_make_credential_eddsa(softkey, ctap2: Ctap2):
    response, h = make_credential(ctap2, alg=EDDSA, rk=True)
    assert response.auth_data.credential_data.public_key[3] == -8
    verify_packed(response, h, softkey.ca_der())
    assertion, h2 = get_assertion(ctap2)
    verify_assertion(assertion, h2, response)


def test_algorithm_preference_and_unsupported_algorithms(ctap2: Ctap2):
    h = b"\x01" * 32
    response = ctap2.make_credential(h, RP, user(), [{"type": "public-key", "alg": -257}, EDDSA, ES256])
    assert response.auth_data.credential_data.public_key[3] == -8, "first supported in the host's order"
    expect_error(ERR.UNSUPPORTED_ALGORITHM, ctap2.make_credential, h, RP, user(), [{"type": "public-key", "alg": -257}])


def test_attestation_none(make_softkey):
    ctap = make_softkey("--attestation", "none").ctap2()
    response, _ = make_credential(ctap)
    assert response.fmt == "none" and response.att_stmt == {}


def test_excluded_credential(ctap2: Ctap2):
    first, _ = make_credential(ctap2)
    expect_error(ERR.CREDENTIAL_EXCLUDED, make_credential, ctap2, exclude=[descriptor(first)])
    # An exclude list of unknown ids does not stop registration.
    make_credential(ctap2, exclude=[{"type": "public-key", "id": b"\x00" * 32}])


def test_resident_credentials_and_get_next_assertion(ctap2: Ctap2):
    made = {}
    for n in (1, 2, 3):
        response, _ = make_credential(ctap2, rk=True, n=n)
        made[response.auth_data.credential_data.credential_id] = response
    first, h = get_assertion(ctap2)
    assert first.number_of_credentials == 3
    seen = [first]
    for _ in range(2):
        seen.append(ctap2.get_next_assertion())
    ids = {a.credential["id"] for a in seen}
    assert ids == set(made)
    for assertion in seen:
        verify_assertion(assertion, h, made[assertion.credential["id"]])
        assert assertion.user["id"] in {user(n)["id"] for n in (1, 2, 3)}
    expect_error(ERR.NOT_ALLOWED, ctap2.get_next_assertion)


def test_get_next_assertion_without_a_get_assertion(ctap2: Ctap2):
    expect_error(ERR.NOT_ALLOWED, ctap2.get_next_assertion)


def test_resident_credential_for_the_same_user_is_replaced(ctap2: Ctap2):
    make_credential(ctap2, rk=True, n=1)
    second, _ = make_credential(ctap2, rk=True, n=1)
    assertion, _ = get_assertion(ctap2)
    assert assertion.number_of_credentials in (None, 1)
    assert assertion.credential["id"] == second.auth_data.credential_data.credential_id


def test_no_credentials(ctap2: Ctap2):
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2)
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2, [{"type": "public-key", "id": b"\x01" * 32}])
    made, _ = make_credential(ctap2, rk=True)
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap2, rp_id="other.example")


def test_silent_assertion_has_no_up_flag(ctap2: Ctap2):
    made, _ = make_credential(ctap2)
    assertion, h = get_assertion(ctap2, [descriptor(made)], options={"up": False})
    data = verify_assertion(assertion, h, made)
    assert not data.flags & FLAG_UP


def test_presence_deny(make_softkey):
    ctap = make_softkey("--presence", "deny").ctap2()
    assert ctap.info.versions  # getInfo needs no presence
    expect_error(ERR.OPERATION_DENIED, make_credential, ctap)
    expect_error(ERR.OPERATION_DENIED, ctap.selection)


def test_selection(ctap2: Ctap2):
    ctap2.selection()


def test_credentials_and_counters_survive_a_restart(softkey):
    ctap = softkey.ctap2()
    made, _ = make_credential(ctap, rk=True)
    before, h = get_assertion(ctap)
    counter = verify_assertion(before, h, made).counter
    aaguid = ctap.info.aaguid
    softkey.restart()
    ctap = softkey.ctap2()
    assert ctap.info.aaguid == aaguid
    after, h = get_assertion(ctap)
    assert after.credential["id"] == made.auth_data.credential_data.credential_id
    assert verify_assertion(after, h, made).counter > counter


def test_reset_right_after_power_up_wipes_credentials(softkey):
    ctap = softkey.ctap2()
    make_credential(ctap, rk=True)
    softkey.restart()
    ctap = softkey.ctap2()
    ctap.reset()
    expect_error(ERR.NO_CREDENTIALS, get_assertion, ctap)


def test_reset_is_refused_ten_seconds_after_power_up(softkey):
    ctap = softkey.ctap2()
    made, _ = make_credential(ctap, rk=True)
    time.sleep(10.5)
    expect_error(ERR.NOT_ALLOWED, ctap.reset)
    get_assertion(ctap)


# --- Malformed requests, sent as raw bytes --------------------------------------------------

def test_non_canonical_cbor_is_invalid_cbor(ctap2: Ctap2):
    h = b"\x02" * 32
    # getAssertion {2: cdh, 1: rpId}: keys out of order.
    out_of_order = b"\x02\xa2\x02\x58\x20" + h + b"\x01\x6bexample.com"
    assert status_of(ctap2, out_of_order) == ERR.INVALID_CBOR
    # The same request with a length that is not the shortest form.
    long_form = b"\x02\xa2\x18\x01\x6bexample.com\x02\x58\x20" + h
    assert status_of(ctap2, long_form) == ERR.INVALID_CBOR
    # Duplicate keys.
    duplicate = b"\x02\xa3\x01\x6bexample.com\x01\x6bexample.com\x02\x58\x20" + h
    assert status_of(ctap2, duplicate) == ERR.INVALID_CBOR
    # Trailing bytes after the map; an indefinite-length map; a tag.
    canonical = encode({1: "example.com", 2: h})
    assert status_of(ctap2, b"\x02" + canonical + b"\x00") == ERR.INVALID_CBOR
    assert status_of(ctap2, b"\x02\xbf\x01\x6bexample.com\x02\x58\x20" + h + b"\xff") == ERR.INVALID_CBOR
    assert status_of(ctap2, b"\x02\xc0" + canonical) == ERR.INVALID_CBOR
    # Truncated.
    assert status_of(ctap2, b"\x02" + canonical[:-3]) == ERR.INVALID_CBOR


def test_nesting_deeper_than_four_is_invalid_cbor(ctap2: Ctap2):
    deep = {1: b"\x01" * 32, 2: RP, 3: user(), 4: [ES256], 6: {"x": [[[1]]]}}
    assert status_of(ctap2, b"\x01" + encode(deep)) == ERR.INVALID_CBOR


def test_missing_parameters(ctap2: Ctap2):
    h = b"\x03" * 32
    assert status_of(ctap2, b"\x01" + encode({2: RP, 3: user(), 4: [ES256]})) == ERR.MISSING_PARAMETER
    assert status_of(ctap2, b"\x01" + encode({1: h, 3: user(), 4: [ES256]})) == ERR.MISSING_PARAMETER
    assert status_of(ctap2, b"\x01" + encode({1: h, 2: RP, 4: [ES256]})) == ERR.MISSING_PARAMETER
    assert status_of(ctap2, b"\x01" + encode({1: h, 2: RP, 3: user()})) == ERR.MISSING_PARAMETER
    assert status_of(ctap2, b"\x02" + encode({2: h})) == ERR.MISSING_PARAMETER
    assert status_of(ctap2, b"\x02" + encode({1: "example.com"})) == ERR.MISSING_PARAMETER


def test_client_data_hash_of_the_wrong_length_is_invalid_length(ctap2: Ctap2):
    # Hardware keys parse clientDataHash as a fixed 32-byte string and answer another length
    # with CTAP1_ERR_INVALID_LENGTH; nothing is created and no counter is spent.
    made, _ = make_credential(ctap2)
    for length in (0, 16, 31, 33, 64):
        h = b"\x05" * length
        mc = {1: h, 2: RP, 3: user(), 4: [ES256]}
        assert status_of(ctap2, b"\x01" + encode(mc)) == ERR.INVALID_LENGTH, length
        ga = {1: RP["id"], 2: h, 3: [descriptor(made)]}
        assert status_of(ctap2, b"\x02" + encode(ga)) == ERR.INVALID_LENGTH, length
    assertion, h = get_assertion(ctap2, [descriptor(made)])
    assert verify_assertion(assertion, h, made).counter == 1


def test_mistyped_parameters(ctap2: Ctap2):
    h = b"\x04" * 32
    good = {1: h, 2: RP, 3: user(), 4: [ES256]}
    for key, bad in ((1, "not bytes"), (2, "not a map"), (3, [1]), (4, {"alg": -7}), (7, ["rk"])):
        request = dict(good)
        request[key] = bad
        assert status_of(ctap2, b"\x01" + encode(request)) == ERR.CBOR_UNEXPECTED_TYPE, key
    assert status_of(ctap2, b"\x02" + encode({1: 5, 2: h})) == ERR.CBOR_UNEXPECTED_TYPE
    # Parameters that are not a map at all.
    assert status_of(ctap2, b"\x01" + encode([1, 2])) == ERR.CBOR_UNEXPECTED_TYPE


def test_credblob_longer_than_the_maximum_is_ignored(ctap2: Ctap2):
    # A 7000-byte request still fits one HID message; CTAP 2.1 §12.2 says an oversized credBlob
    # is not stored and the extension output is false.
    too_long = b"\x00" * (ctap2.info.max_cred_blob_length + 1)
    response, _ = make_credential(ctap2, rk=True, extensions={"credBlob": too_long})
    assert response.auth_data.extensions.get("credBlob") is False
    huge, _ = make_credential(ctap2, rk=True, n=2, extensions={"credBlob": b"\x00" * 7000})
    assert huge.auth_data.extensions.get("credBlob") is False


def test_strict_python_decoder_accepts_every_response(ctap2: Ctap2):
    # Ctap2 is strict by default: it raises on any response that is not canonical CBOR. Run the
    # commands with the richest responses through it.
    made, _ = make_credential(ctap2, rk=True, extensions={"credProtect": 2, "credBlob": b"blob"})
    get_assertion(ctap2, [descriptor(made)], extensions={"credBlob": True})
    ctap2.get_info()
    assert isinstance(raw(ctap2, b"\x04"), bytes)


def test_user_details_are_withheld_without_user_verification(ctap2: Ctap2):
    make_credential(ctap2, rk=True, n=7)
    make_credential(ctap2, rk=True, n=8)
    first, _ = get_assertion(ctap2)
    assert first.user["id"] in (user(7)["id"], user(8)["id"])
    # CTAP 2.1 §6.2.2: name and displayName only after user verification.
    assert "name" not in first.user and "displayName" not in first.user


@pytest.mark.parametrize("rk", [False, True])
def test_up_false_is_refused_for_make_credential(ctap2: Ctap2, rk: bool):
    expect_error(ERR.INVALID_OPTION, make_credential, ctap2, rk=rk, up=False)
