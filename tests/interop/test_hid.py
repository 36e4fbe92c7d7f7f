"""CTAP-HID over the UDP transport: framing, channels and every CTAPHID error path."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.hid import CAPABILITY, CTAPHID

from ctaphelp import ERR, RawHost

MAX_MESSAGE = 7609


def test_init_reports_protocol_2_and_capabilities(softkey):
    device = softkey.device()
    assert device.version == 2
    assert device.capabilities & CAPABILITY.CBOR
    assert device.capabilities & CAPABILITY.WINK
    # No CTAP1/U2F: NMSG is advertised, and python-fido2 therefore uses CTAP2 only.
    assert device.capabilities & CAPABILITY.NMSG


def test_ping_echoes_every_size_up_to_the_maximum(softkey):
    device = softkey.device()
    for size in (0, 1, 57, 58, 116, 117, 1024, MAX_MESSAGE):
        payload = bytes(i % 251 for i in range(size))
        assert device.ping(payload) == payload


def test_wink(softkey):
    softkey.device().wink()


def test_msg_is_refused_without_ctap1(softkey):
    device = softkey.device()
    with pytest.raises(CtapError) as e:
        device.call(CTAPHID.MSG, bytes.fromhex("00010300000000"))
    assert e.value.code == ERR.INVALID_COMMAND


def test_vendor_and_device_only_commands_are_invalid(softkey):
    host = RawHost(softkey.address)
    host.init()
    for cmd in (CTAPHID.KEEPALIVE, CTAPHID.ERROR, 0x40, 0x7F):
        host.send_init(host.cid, cmd, 0)
        host.expect_error(ERR.INVALID_COMMAND)


def test_oversized_message_is_invalid_len(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.send_init(host.cid, CTAPHID.CBOR, MAX_MESSAGE + 1, b"\x04")
    host.expect_error(ERR.INVALID_LENGTH)


def test_wrong_sequence_number_is_invalid_seq(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.send_init(host.cid, CTAPHID.PING, 200, b"\x01" * 57)
    host.send_cont(host.cid, 0, b"\x01" * 59)
    host.send_cont(host.cid, 2, b"\x01" * 59)
    host.expect_error(ERR.INVALID_SEQ)
    # The abandoned message leaves nothing behind.
    host.send_init(host.cid, CTAPHID.PING, 3, b"abc")
    assert host.recv_message() == (CTAPHID.PING, b"abc")


def test_unallocated_and_broadcast_channels_are_invalid(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.cid = 0x0BADCAFE
    host.send_init(host.cid, CTAPHID.PING, 1, b"x")
    host.expect_error(ERR.INVALID_CHANNEL)
    host.cid = 0xFFFFFFFF
    host.send_init(host.cid, CTAPHID.PING, 1, b"x")
    host.expect_error(ERR.INVALID_CHANNEL)


def test_init_with_a_wrong_length_is_invalid_len(softkey):
    host = RawHost(softkey.address)
    host.send_init(host.cid, CTAPHID.INIT, 4, b"1234")
    host.expect_error(ERR.INVALID_LENGTH)


def test_init_on_an_allocated_channel_resynchronises_it(softkey):
    host = RawHost(softkey.address)
    cid = host.init()
    host.send_init(cid, CTAPHID.PING, 200, b"\x01" * 57)  # left half-sent
    assert host.init() == cid
    host.send_init(cid, CTAPHID.PING, 2, b"ok")
    assert host.recv_message() == (CTAPHID.PING, b"ok")


def test_another_channel_is_busy_mid_message_and_timeout_ends_it(softkey):
    a = RawHost(softkey.address)
    b = RawHost(softkey.address)
    a.init()
    b.init()
    a.send_init(a.cid, CTAPHID.PING, 100, b"\x02" * 57)
    b.send_init(b.cid, CTAPHID.PING, 1, b"x")
    b.expect_error(ERR.CHANNEL_BUSY)
    # A never sends its continuation packet: the inter-packet timeout ends the message.
    a.expect_error(ERR.TIMEOUT)
    b.send_init(b.cid, CTAPHID.PING, 1, b"y")
    assert b.recv_message() == (CTAPHID.PING, b"y")


def test_lock_holds_other_channels_off_until_it_expires(softkey):
    owner = softkey.device()
    other = RawHost(softkey.address)
    other.init()
    owner.lock(1)
    other.send_init(other.cid, CTAPHID.PING, 1, b"x")
    other.expect_error(ERR.CHANNEL_BUSY)
    assert owner.ping(b"mine") == b"mine"
    # python-fido2 retries CHANNEL_BUSY every 100 ms, so this returns once the lock expires.
    started = time.monotonic()
    assert softkey.device().ping(b"later") == b"later"
    assert time.monotonic() - started < 3


def test_lock_arguments_are_checked(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.send_init(host.cid, CTAPHID.LOCK, 1, b"\x0b")
    host.expect_error(ERR.INVALID_PARAMETER)
    host.send_init(host.cid, CTAPHID.LOCK, 0)
    host.expect_error(ERR.INVALID_LENGTH)


def test_datagrams_that_are_not_one_report_are_dropped(softkey):
    host = RawHost(softkey.address)
    host.init()
    for size in (1, 63, 65, 128):
        host.sock.send(b"\xff" * size)
    host.expect_silence()
    host.send_init(host.cid, CTAPHID.PING, 2, b"hi")
    assert host.recv_message() == (CTAPHID.PING, b"hi")


def test_stray_continuation_packets_are_ignored(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.send_cont(host.cid, 0, b"junk")
    host.expect_silence()


def test_replies_go_back_to_each_sender(softkey):
    hosts = [RawHost(softkey.address) for _ in range(3)]
    cids = {h.init() for h in hosts}
    assert len(cids) == 3
    for i, host in enumerate(hosts):
        host.send_init(host.cid, CTAPHID.PING, 1, bytes([i]))
        assert host.recv_message() == (CTAPHID.PING, bytes([i]))


def test_cancel_ends_a_pending_request_with_keepalive_cancel(make_softkey):
    key = make_softkey("--presence-delay-ms", "10000")
    ctap = key.ctap2()
    statuses = []
    event = threading.Event()
    timer = threading.Timer(0.4, event.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(CtapError) as e:
        ctap.selection(event=event, on_keepalive=statuses.append)
    timer.cancel()
    assert e.value.code == ERR.KEEPALIVE_CANCEL
    assert time.monotonic() - started < 5
    # While waiting for the touch the key said so.
    assert 2 in statuses  # STATUS.UPNEEDED


def test_keepalives_flow_while_presence_is_awaited(make_softkey):
    key = make_softkey("--presence-delay-ms", "450")
    host = RawHost(key.address)
    host.init()
    host.send_init(host.cid, CTAPHID.CBOR, 1, b"\x0b")  # authenticatorSelection
    keepalives = 0
    while True:
        first = host.recv()
        if first[4] == 0x80 | CTAPHID.KEEPALIVE:
            assert first[7] in (1, 2)
            keepalives += 1
            continue
        assert first[4] == 0x80 | CTAPHID.CBOR and first[7] == 0
        break
    # ~100 ms apart over ~450 ms.
    assert 2 <= keepalives <= 8


def test_unknown_ctap2_command_is_invalid_command(ctap2: Ctap2):
    with pytest.raises(CtapError) as e:
        ctap2.send_cbor(0x55)
    assert e.value.code == ERR.INVALID_COMMAND


def test_empty_cbor_message_is_invalid_len(softkey):
    host = RawHost(softkey.address)
    host.init()
    host.send_init(host.cid, CTAPHID.CBOR, 0)
    host.expect_error(ERR.INVALID_LENGTH)
