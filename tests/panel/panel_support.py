"""Constants and helpers shared by the panel's browser tests.

A module with its own name, so suites run together (tests/*) cannot mix up their conftest modules.
"""

from __future__ import annotations

import os
import socket
import subprocess
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
