"""Fixtures for the pairing-tool end-to-end tests: a real `keyward serve`, an organisation with an
admin and a user with a key, and a real `keyward-pair` logged in as that admin and running with
`--udp`.

Binaries: $KEYWARD_BIN (default target/debug/keyward) and $KEYWARD_PAIR_BIN (default
target/debug/keyward-pair).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "interop"))  # UDP CtapHidConnection shared with the interop suite

SERVING = re.compile(r"serving CTAP-HID on udp://(\S+):(\d+)")


def _bin(var: str, name: str) -> str:
    path = os.environ.get(var, str(ROOT / "target" / "debug" / name))
    if not Path(path).exists():
        pytest.fail(f"{name} not found at {path}: build it or set {var}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body=None) -> tuple[int, dict | None]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}/api/v1{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)


class Server:
    def __init__(self, tmp: Path):
        self.bin = _bin("KEYWARD_BIN", "keyward")
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
        self.env.update(KEYWARD_DATA_DIR=str(tmp / "server"), KEYWARD_LISTEN=f"127.0.0.1:{self.port}",
                        KEYWARD_LOG="warn")
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([self.bin, *args], env=self.env, input=stdin, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.bin, "serve"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("keyward serve did not become healthy")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PairTool:
    """One `keyward-pair` home; `run()` starts `keyward-pair run --udp` and waits for its address."""

    def __init__(self, home: Path, server: str):
        self.bin = _bin("KEYWARD_PAIR_BIN", "keyward-pair")
        self.home, self.server = home, server
        self.proc: subprocess.Popen | None = None
        self.address: tuple[str, int] | None = None
        self.lines: list[str] = []

    def cmd(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, "--home", str(self.home), *args], input=stdin, capture_output=True,
                              text=True, timeout=60)

    def run(self) -> None:
        self.proc = subprocess.Popen([self.bin, "--home", str(self.home), "run", "--udp", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        m = SERVING.search(first)
        if not m:
            self.stop()
            raise RuntimeError(f"keyward-pair run did not start: {first!r}")
        self.address = (m.group(1), int(m.group(2)))
        # Keep draining stderr (status lines) so the tool never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, needle: str, timeout: float = 5.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(needle in line for line in self.lines):
                return
            time.sleep(0.02)
        raise AssertionError(f"keyward-pair never said {needle!r}; it said: {self.lines}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def keyward(tmp_path):
    """A running server with organisation Pairco, an admin with an API token, and user alice with a key."""
    server = Server(tmp_path)
    server.cli("org", "create", "Pairco")
    server.cli("admin", "create", "--org", "Pairco", "--email", "admin@pairco.test", "--role", "admin",
               stdin="a long admin password\n")
    token = server.cli("token", "create", "--email", "admin@pairco.test", "--name", "pair-e2e")
    server.start()
    api = Api(server.base, token)
    status, user = api.call("POST", "/users", {"upn": "alice@pairco.test", "display_name": "Alice"})
    assert status == 201, user
    status, key = api.call("POST", f"/users/{user['id']}/key")
    assert status == 201, key
    yield server, api, token, user
    server.stop()


@pytest.fixture
def admin_tool(keyward, tmp_path):
    server, api, token, user = keyward
    tool = PairTool(tmp_path / "pair-admin", server.base)
    done = tool.cmd("login", "--server", server.base, "--token-stdin", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    tool.run()
    tool.wait_for("connected as admin")
    yield tool
    tool.stop()


@pytest.fixture
def new_tool(keyward, tmp_path):
    """Factory for extra (not logged-in) pairing-tool homes."""
    server, *_ = keyward
    tools: list[PairTool] = []

    def factory(name: str) -> PairTool:
        tool = PairTool(tmp_path / name, server.base)
        tools.append(tool)
        return tool

    yield factory
    for tool in tools:
        tool.stop()


@pytest.fixture
def user_tool(keyward, tmp_path):
    """Alice's own pairing tool, activated with a one-time code and running."""
    server, api, _, user = keyward
    status, activation = api.call("POST", f"/users/{user['id']}/activation")
    assert status == 201, activation
    tool = PairTool(tmp_path / "pair-alice", server.base)
    done = tool.cmd("activate", "--server", server.base, "--code", activation["code"])
    assert done.returncode == 0, done.stderr
    again = PairTool(tmp_path / "pair-again", server.base).cmd(
        "activate", "--server", server.base, "--code", activation["code"])
    assert again.returncode != 0 and "activation code" in again.stderr, "codes are single-use"
    assert activation["code"] not in again.stderr
    tool.run()
    tool.wait_for("key ", timeout=5.0)
    yield tool
    tool.stop()
