"""Crash consistency of the softkey's state: the process is killed with SIGKILL (no shutdown
code runs) while it answers, and the restarted key must never repeat a signature counter that a
client saw, nor give back a PIN retry that a client saw spent."""

from __future__ import annotations

import threading
import time

from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin

from ctaphelp import ERR, descriptor, expect_error, get_assertion, make_credential, set_pin, verify_assertion

MC = ClientPin.PERMISSION.MAKE_CREDENTIAL


def kill_9(softkey) -> None:
    """Ends the process at once (SIGKILL, by its PID), then tidies up as `stop` would."""
    assert softkey.proc is not None
    softkey.proc.kill()
    softkey.proc.wait()
    softkey.stop()


def test_counters_never_repeat_after_kill_9_mid_burst(softkey):
    ctap = softkey.ctap2()
    made, _ = make_credential(ctap)
    allow = [descriptor(made)]
    highest = 0
    for round_ in range(6):
        seen: list[int] = []
        errors: list[BaseException] = []

        def burst() -> None:
            try:
                client = Ctap2(softkey.device(timeout=2.0))
                while True:
                    assertion, h = get_assertion(client, allow)
                    seen.append(verify_assertion(assertion, h, made).counter)
            except Exception as e:  # the key died under us: expected
                errors.append(e)

        worker = threading.Thread(target=burst)
        worker.start()
        # Let it run a varying while, so the kill lands at different points of a request.
        deadline = time.monotonic() + 10
        while len(seen) < 10 + 7 * round_ and time.monotonic() < deadline:
            time.sleep(0.001)
        kill_9(softkey)
        worker.join(timeout=15)
        assert not worker.is_alive()
        assert errors, "the burst ended because the key was killed"
        assert len(seen) >= 10, f"round {round_}: only {len(seen)} assertions before the kill"
        assert all(b > a for a, b in zip(seen, seen[1:])), "counters strictly increase"
        assert seen[0] > highest, f"round {round_}: counter {seen[0]} repeats one seen before the crash"
        highest = seen[-1]
        softkey.start()

    ctap = softkey.ctap2()
    assertion, h = get_assertion(ctap, allow)
    assert verify_assertion(assertion, h, made).counter > highest


def test_spent_pin_retries_survive_kill_9(softkey):
    ctap = softkey.ctap2()
    set_pin(ctap)
    for _ in range(2):
        expect_error(ERR.PIN_INVALID, ClientPin(ctap).get_pin_token, "00000000", MC, "example.com")
    assert ClientPin(ctap).get_pin_retries()[0] == 6
    kill_9(softkey)
    softkey.start()
    ctap = softkey.ctap2()
    assert ClientPin(ctap).get_pin_retries()[0] == 6, "the retries spent before the crash stay spent"
    expect_error(ERR.PIN_INVALID, ClientPin(ctap).get_pin_token, "00000000", MC, "example.com")
    kill_9(softkey)
    softkey.start()
    assert ClientPin(softkey.ctap2()).get_pin_retries()[0] == 5
