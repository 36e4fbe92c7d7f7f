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

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import expect

from panel_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEMO_USERS,
    ORG,
    ROOT,
    SIM_CLIENT,
    SIM_SECRET,
    SIM_TENANT,
    SIM_USERS,
    Serve,
    binary,
    email_of,
    http,
    sign_in_page,
    stop_process,
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
        return http(method, self.url + "/api/v1" + path, body, token or self.token, timeout=10)

    def offers(self, method: str, path: str) -> bool:
        """Whether the server's OpenAPI document lists `method path` (path under /api/v1)."""
        return (method.lower(), "/api/v1" + path) in self.paths


@pytest.fixture(scope="session")
def server():
    serve = Serve("keyward-panel-")
    token = serve.seed(ORG, "panel-tests")
    serve.start()
    srv = Server(url=serve.url, env=serve.env, binary=serve.binary, token=token)
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
    serve.stop()


@pytest.fixture(scope="session")
def graph_sim():
    """The Graph simulator (binary from KEYWARD_GRAPH_SIM_BIN), serving one tenant on loopback."""
    proc = subprocess.Popen(
        [binary("KEYWARD_GRAPH_SIM_BIN", "keyward-graph-sim", "keyward-graph-sim"), "--users", str(SIM_USERS),
         "--tenant-id", SIM_TENANT, "--client-id", SIM_CLIENT, "--client-secret", SIM_SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        pytest.fail(f"keyward-graph-sim did not start: {line!r}")
    url = line.split("listening on ", 1)[1].strip()
    yield url
    stop_process(proc)


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
    page = sign_in_page(browser, server.url, email_of(role), viewport=viewport,
                        watch=lambda p: setattr(p, "problems", Problems(p)))
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
