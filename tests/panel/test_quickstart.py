"""`keyward quickstart`: one command gives a signed-in panel with a simulated tenant's users."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect

from panel_support import ROOT, free_port

USERS = 5


def test_quickstart_serves_a_panel_with_imported_demo_users(browser):
    binary = os.environ.get("KEYWARD_BIN", str(ROOT / "target" / "debug" / "keyward"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    proc = subprocess.Popen(
        [binary, "quickstart", "--listen", f"127.0.0.1:{port}", "--users", str(USERS)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("password:" in line for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "quickstart exited: " + "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "no sign-in details within 60 s"
        text = "".join(lines)
        url = re.search(r"keyward listening on (\S+)", text).group(1)
        email = re.search(r"e-mail:\s+(\S+)", text).group(1)
        link = re.search(r"sign-in link:\s+(\S+)", text).group(1)
        assert url == f"http://127.0.0.1:{port}"
        assert link.startswith(f"http://localhost:{port}/sign-in#link=")

        # The one-time link signs the owner in: no e-mail address or password to type.
        context = browser.new_context()
        page = context.new_page()
        page.goto(link)
        page.wait_for_url("**/users")
        expect(page.locator("#whoami")).to_contain_text(email)
        # It works once: a second visit stays on the sign-in page and says why.
        other = browser.new_context().new_page()
        other.goto(link)
        expect(other.locator("#signin-error")).to_contain_text("already used or has expired")
        other.context.close()
        # The first import runs in the background: the simulated tenant's users arrive shortly.
        rows = page.locator("#users-table tbody tr")
        for _ in range(20):
            if rows.count() == USERS:
                break
            time.sleep(0.5)
            page.reload()
            expect(page.locator("#page-status")).not_to_have_text(re.compile("Loading"))
        expect(rows).to_have_count(USERS)
        expect(rows.first).to_contain_text("entra")
        context.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    # Without --data-dir the demo leaves nothing behind.
    assert not (Path(tempfile.gettempdir()) / f"keyward-quickstart-{proc.pid}").exists()
