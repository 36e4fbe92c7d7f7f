"""Small helpers shared by the interop tests: raw CTAP calls, PIN tokens, credentials."""

from __future__ import annotations

import os
import socket
import struct
import time
from hashlib import sha256

from fido2 import cbor
from fido2.attestation import PackedAttestation
from fido2.attestation.base import verify_x509_chain
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocolV2
from fido2.hid import CTAPHID
from fido2.webauthn import AuthenticatorData

RP = {"id": "example.com", "name": "Example"}
ES256 = {"type": "public-key", "alg": -7}
EDDSA = {"type": "public-key", "alg": -8}
PIN = "12345678"
ERR = CtapError.ERR


def cdh() -> bytes:
    """A fresh clientDataHash."""
    return os.urandom(32)


def user(n: int = 1) -> dict:
    return {"id": bytes([n]) * 8, "name": f"user{n}@example.com", "displayName": f"User {n}"}


def rp_id_hash(rp_id: str = RP["id"]) -> bytes:
    return sha256(rp_id.encode()).digest()


def raw(ctap: Ctap2, payload: bytes) -> bytes:
    """Sends CTAPHID_CBOR bytes as they are and returns the raw response (status first)."""
    return ctap.device.call(CTAPHID.CBOR, payload)


def status_of(ctap: Ctap2, payload: bytes) -> int:
    return raw(ctap, payload)[0]


def expect_error(code: int, fn, *args, **kwargs) -> CtapError:
    try:
        fn(*args, **kwargs)
    except CtapError as e:
        assert e.code == code, f"expected {ERR(code).name}, got {e.code!r}"
        return e
    raise AssertionError(f"expected {ERR(code).name}, the call succeeded")


def set_pin(ctap: Ctap2, pin: str = PIN) -> None:
    ClientPin(ctap).set_pin(pin)


def token(ctap: Ctap2, permissions: int, rp_id: str | None = None, pin: str = PIN, protocol=None):
    """A pinUvAuthToken with `permissions`; returns (protocol, token)."""
    protocol = protocol or PinProtocolV2()
    client_pin = ClientPin(ctap, protocol)
    return protocol, client_pin.get_pin_token(pin, ClientPin.PERMISSION(permissions), rp_id)


def make_credential(ctap: Ctap2, *, rk=False, alg=ES256, n=1, exclude=None, extensions=None, uv_token=None, up=None, rp=RP):
    """makeCredential; returns (response, client data hash)."""
    h = cdh()
    options = {"rk": True} if rk else {}
    if up is not None:
        options["up"] = up
    pin_param = pin_protocol = None
    if uv_token is not None:
        protocol, tok = uv_token
        pin_param, pin_protocol = protocol.authenticate(tok, h), protocol.VERSION
    response = ctap.make_credential(
        h, rp, user(n), [alg], exclude_list=exclude, extensions=extensions,
        options=options or None, pin_uv_param=pin_param, pin_uv_protocol=pin_protocol,
    )
    return response, h


def get_assertion(ctap: Ctap2, allow=None, *, extensions=None, options=None, uv_token=None, rp_id=RP["id"]):
    h = cdh()
    pin_param = pin_protocol = None
    if uv_token is not None:
        protocol, tok = uv_token
        pin_param, pin_protocol = protocol.authenticate(tok, h), protocol.VERSION
    response = ctap.get_assertion(
        rp_id, h, allow_list=allow, extensions=extensions, options=options,
        pin_uv_param=pin_param, pin_uv_protocol=pin_protocol,
    )
    return response, h


def descriptor(att_response) -> dict:
    return {"type": "public-key", "id": att_response.auth_data.credential_data.credential_id}


def verify_packed(att_response, client_data_hash: bytes, ca_der: bytes) -> None:
    """python-fido2's packed attestation checks, then the chain up to the softkey's CA."""
    assert att_response.fmt == "packed"
    result = PackedAttestation().verify(att_response.att_stmt, att_response.auth_data, client_data_hash)
    verify_x509_chain(result.trust_path + [ca_der])


def verify_assertion(assertion, client_data_hash: bytes, att_response) -> AuthenticatorData:
    public_key = att_response.auth_data.credential_data.public_key
    assertion.verify(client_data_hash, public_key)
    return assertion.auth_data


class RawHost:
    """A CTAP-HID host written out by hand, for the error paths a library never takes."""

    def __init__(self, address, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(address)
        self.sock.settimeout(timeout)
        self.cid = 0xFFFFFFFF

    def init(self) -> int:
        nonce = os.urandom(8)
        self.send_init(self.cid, CTAPHID.INIT, 8, nonce)
        cmd, data = self.recv_message()
        assert cmd == CTAPHID.INIT and data[:8] == nonce
        self.cid = struct.unpack(">I", data[8:12])[0]
        return self.cid

    def send_init(self, cid: int, cmd: int, length: int, data: bytes = b"") -> None:
        self.sock.send((struct.pack(">IBH", cid, 0x80 | cmd, length) + data).ljust(64, b"\0")[:64])

    def send_cont(self, cid: int, seq: int, data: bytes = b"") -> None:
        self.sock.send((struct.pack(">IB", cid, seq) + data).ljust(64, b"\0")[:64])

    def recv(self) -> bytes:
        packet = self.sock.recv(65)
        assert len(packet) == 64, f"reply of {len(packet)} bytes"
        return packet

    def recv_message(self, skip_keepalive: bool = True) -> tuple[int, bytes]:
        while True:
            first = self.recv()
            cid, cmd, length = struct.unpack(">IBH", first[:7])
            assert cid == self.cid, f"reply on channel {cid:#x}, expected {self.cid:#x}"
            if skip_keepalive and cmd == 0x80 | CTAPHID.KEEPALIVE:
                continue
            data = first[7:]
            seq = 0
            while len(data) < length:
                cont = self.recv()
                assert cont[4] == seq
                data += cont[5:]
                seq += 1
            return cmd & 0x7F, data[:length]

    def expect_error(self, code: int) -> None:
        cmd, data = self.recv_message()
        assert (cmd, data) == (CTAPHID.ERROR, bytes([code])), f"got cmd {cmd:#x} data {data.hex()}"

    def expect_silence(self, seconds: float = 0.3) -> None:
        self.sock.settimeout(seconds)
        try:
            packet = self.sock.recv(65)
        except socket.timeout:
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"unexpected reply {packet.hex()}")


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def encode(value) -> bytes:
    return cbor.encode(value)
