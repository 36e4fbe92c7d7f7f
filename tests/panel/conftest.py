"""Fixtures for the panel's browser tests.

A session-wide fixture boots the real `keyward serve` (binary from KEYWARD_BIN, default
target/debug/keyward) on a free loopback port with a temporary data directory, bootstraps one
organisation with an admin of every role through the bootstrap CLI (password on stdin), creates
demo users through the REST API with an owner's API token, and hands out signed-in browser pages
driven by the Debian Chromium.

Screenshots go to a temporary directory, or to KEYWARD_SCREENSHOT_DIR when it is set
(`KEYWARD_SCREENSHOT_DIR=docs/screenshots` regenerates the operator guide's images).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import expect

from panel_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEMO_USERS,
    ORG,
    PASSWORD,
    ROLES,
    ROOT,
    SIM_CLIENT,
    SIM_SECRET,
    SIM_TENANT,
    SIM_USERS,
    email_of,
    free_port,
    run_cli,
)

# The suite shares two cores with cargo and a debug-build server: give the browser time.
expect.set_options(timeout=15_000)

@dataclass
class Server:
    url: str
    env: dict
    binary: str
    token: str = ""
    users: list = field(default_factory=list)
    paths: set = field(default_factory=set)

    def api(self, method: str, path: str, body=None, token: str | None = None):
        """Calls the REST API with a bearer token; returns (status, parsed JSON or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                raw = res.read()
                return res.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, None

    def offers(self, method: str, path: str) -> bool:
        """Whether the server's OpenAPI document lists `method path` (path under /api/v1)."""
        return (method.lower(), "/api/v1" + path) in self.paths


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("KEYWARD_BIN", str(ROOT / "target" / "debug" / "keyward"))
    if not Path(binary).exists():
        pytest.fail(f"no keyward binary at {binary}: run `cargo build -p keyward` or set KEYWARD_BIN")
    data_dir = tempfile.mkdtemp(prefix="keyward-panel-")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_") or k == "KEYWARD_BIN"
    }
    env.pop("KEYWARD_BIN", None)
    env.update(
        {
            "KEYWARD_LISTEN": f"127.0.0.1:{port}",
            "KEYWARD_DATA_DIR": data_dir,
            "RUST_LOG": env.get("RUST_LOG", "warn"),
        }
    )
    run_cli(binary, env, "org", "create", ORG)
    for role in ROLES:
        run_cli(binary, env, "admin", "create", "--org", ORG, "--email", email_of(role), "--role", role,
                stdin=PASSWORD + "\n")
    token = run_cli(binary, env, "token", "create", "--email", email_of("owner"), "--name", "panel-tests")

    log = open(Path(data_dir) / "serve.log", "w")
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail("keyward serve exited: " + (Path(data_dir) / "serve.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as res:
                if res.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("keyward serve did not answer /healthz within 60 s")
        time.sleep(0.2)

    srv = Server(url=url, env=env, binary=binary, token=token)
    status, doc = srv.api("GET", "/openapi.json")
    if status == 200 and doc:
        srv.paths = {(m, p) for p, ops in doc.get("paths", {}).items() for m in ops}
    for i in range(DEMO_USERS):
        status, user = srv.api(
            "POST",
            "/users",
            {"upn": f"user-{i:02d}@acme.test", "email": f"user-{i:02d}@acme.test",
             "display_name": f"Demo User {i:02d}"},
        )
        assert status == 201, (status, user)
        srv.users.append(user)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    if os.environ.get("KEYWARD_KEEP_DATA"):
        print(f"kept {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def graph_sim():
    """The Graph simulator (binary from KEYWARD_GRAPH_SIM_BIN), serving one tenant on loopback."""
    binary = os.environ.get("KEYWARD_GRAPH_SIM_BIN", str(ROOT / "target" / "debug" / "keyward-graph-sim"))
    if not Path(binary).exists():
        pytest.skip(f"no keyward-graph-sim at {binary}: cargo build -p keyward-graph-sim")
    proc = subprocess.Popen(
        [binary, "--users", str(SIM_USERS), "--tenant-id", SIM_TENANT, "--client-id", SIM_CLIENT,
         "--client-secret", SIM_SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        pytest.fail(f"keyward-graph-sim did not start: {line!r}")
    url = line.split("listening on ", 1)[1].strip()
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshot_dir():
    configured = os.environ.get("KEYWARD_SCREENSHOT_DIR")
    if configured:
        path = Path(configured)
        if not path.is_absolute():
            path = ROOT / path
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        path = Path(tempfile.mkdtemp(prefix="keyward-panel-shots-"))
        yield path


class Problems:
    """Console errors and CSP violations seen by a page: the panel must run without any."""

    def __init__(self, page):
        self.items: list[str] = []
        page.on("console", lambda m: self.items.append(f"console {m.type}: {m.text}")
                if m.type == "error" and "status of 4" not in m.text else None)
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))


def sign_in(browser, server: Server, role: str, viewport=None):
    """A new browser context signed in as the admin of `role`, through the sign-in page."""
    context = browser.new_context(base_url=server.url, viewport=viewport or {"width": 1280, "height": 860})
    page = context.new_page()
    page.problems = Problems(page)
    page.goto("/sign-in")
    page.get_by_label("E-mail address").fill(email_of(role))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/users")
    page.wait_for_selector("#whoami:has-text('" + role + "')")
    return page


@pytest.fixture
def as_role(browser, server):
    pages = []

    def make(role: str, viewport=None):
        page = sign_in(browser, server, role, viewport)
        pages.append(page)
        return page

    yield make
    for p in pages:
        p.context.close()
