"""Constants and helpers shared by the panel's browser tests.

A module with its own name, so suites run together (tests/*) cannot mix up their conftest modules.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("KEYWARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ORG = "Acme Panel Tests"
PASSWORD = "correct horse battery staple"
ROLES = ("owner", "admin", "helpdesk", "auditor")
DEMO_USERS = 30  # more than one page of 25


def email_of(role: str) -> str:
    return f"{role}@acme.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIM_TENANT = "11111111-2222-3333-4444-555555555555"
SIM_CLIENT = "66666666-7777-8888-9999-000000000000"
SIM_SECRET = "panel-tests-client-secret"
SIM_USERS = 6


def run_cli(binary: str, env: dict, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [binary, *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"keyward {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def binary(env_var: str, name: str, build: str) -> str:
    """A binary from `env_var`, else the debug build; fails the test with how to build it."""
    import pytest

    path = os.environ.get(env_var, str(ROOT / "target" / "debug" / name))
    if not Path(path).exists():
        pytest.fail(f"no {name} at {path}: run `cargo build -p {build}` or set {env_var}")
    return path


def http(method: str, url: str, body=None, token: str | None = None, timeout: float = 20):
    """One JSON request; returns (status, parsed body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw = res.read()
            return res.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None


def stop_process(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Serve:
    """`keyward serve` on a fresh data directory and a free loopback port, its log in the data
    directory. Nothing from the caller's KEYWARD_* environment leaks in, except KEYWARD_BIN."""

    def __init__(self, prefix: str, host: str = "127.0.0.1"):
        self.binary = binary("KEYWARD_BIN", "keyward", "keyward")
        self.data_dir = tempfile.mkdtemp(prefix=prefix)
        port = free_port()
        self.url = f"http://{host}:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_") or k == "KEYWARD_BIN"}
        self.env.update({"KEYWARD_LISTEN": f"127.0.0.1:{port}", "KEYWARD_DATA_DIR": self.data_dir,
                         "RUST_LOG": self.env.get("RUST_LOG", "warn")})
        self.log_path = Path(self.data_dir) / "serve.log"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return run_cli(self.binary, self.env, *args, stdin=stdin)

    def seed(self, org: str, token_name: str) -> str:
        """An organisation with one admin per role (password PASSWORD); an owner's API token."""
        self.cli("org", "create", org)
        for role in ROLES:
            self.cli("admin", "create", "--org", org, "--email", email_of(role), "--role", role,
                     stdin=PASSWORD + "\n")
        return self.cli("token", "create", "--email", email_of("owner"), "--name", token_name)

    def start(self) -> None:
        """Starts the server and waits (≤ 60 s) until /healthz answers."""
        import pytest

        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail("keyward serve exited: " + self.log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as res:
                    if res.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail("keyward serve did not answer /healthz within 60 s")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
        if os.environ.get("KEYWARD_KEEP_DATA"):
            print(f"kept {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def sign_in_page(browser, url: str, email: str, password: str = PASSWORD, viewport=None, watch=None):
    """A new browser context signed in through the sign-in page; returns its page on /users.
    `watch(page)` runs before the first navigation (to collect console errors, say)."""
    context = browser.new_context(base_url=url, viewport=viewport or {"width": 1280, "height": 860})
    page = context.new_page()
    if watch:
        watch(page)
    page.goto("/sign-in")
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/users")
    return page
