"""Fixtures: a real `keyward softkey` process per test, and python-fido2 objects talking to it.

The binary comes from $KEYWARD_BIN (default target/debug/keyward). Each test gets a fresh
state directory; `softkey.restart()` stops the process and starts it again on the same state,
which is the softkey's power cycle.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fido2.ctap2 import Ctap2

from udp_hid import open_device

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"keyward softkey listening on (\S+):(\d+)")


def keyward_bin() -> str:
    path = os.environ.get("KEYWARD_BIN", str(ROOT / "target" / "debug" / "keyward"))
    if not Path(path).exists():
        pytest.fail(f"keyward binary not found at {path}: run `cargo build -p keyward` or set KEYWARD_BIN")
    return path


class Softkey:
    """One `keyward softkey` process and its state directory."""

    def __init__(self, state_dir: Path, *extra: str, env: dict[str, str] | None = None):
        self.state_dir = state_dir
        self.state = state_dir / "softkey.json"
        self.ca_pem = state_dir / "attestation-ca.pem"
        self.extra = list(extra)
        self.env = dict(os.environ)
        self.env.pop("KEYWARD_SOFTKEY_PASSPHRASE", None)
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.address: tuple[str, int] | None = None
        self.stderr_path = state_dir / "softkey.log"

    def start(self) -> None:
        args = [
            keyward_bin(), "softkey",
            "--udp", "127.0.0.1:0",
            "--state", str(self.state),
            "--attestation-ca-out", str(self.ca_pem),
            *self.extra,
        ]
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr, env=self.env)
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = READY.search(line)
        if not match or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"softkey did not become ready: {line!r}\n{self.log()}")
        self.address = (match.group(1), int(match.group(2)))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "stderr", None):
            self.stderr.close()

    def restart(self) -> None:
        """A power cycle: the process ends and starts again on the same state file."""
        self.stop()
        self.start()

    def device(self, timeout: float = 10.0):
        assert self.address is not None, "softkey not running"
        return open_device(self.address, timeout)

    def ctap2(self) -> Ctap2:
        return Ctap2(self.device())

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def ca_der(self) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        return cert.public_bytes(Encoding.DER)


@pytest.fixture
def make_softkey(tmp_path):
    """Factory for softkeys with extra command-line arguments; all are stopped at the end."""
    started: list[Softkey] = []

    def factory(*extra: str, env: dict[str, str] | None = None, subdir: str = "key") -> Softkey:
        state_dir = tmp_path / subdir
        state_dir.mkdir(exist_ok=True)
        key = Softkey(state_dir, *extra, env=env)
        key.start()
        started.append(key)
        return key

    yield factory
    for key in started:
        key.stop()


@pytest.fixture
def softkey(make_softkey) -> Softkey:
    return make_softkey()


@pytest.fixture
def ctap2(softkey) -> Ctap2:
    return softkey.ctap2()
