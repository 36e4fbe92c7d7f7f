"""Two `keyward serve` replicas on one PostgreSQL database, through the real binaries: the admin's
`keyward-pair run --udp` is logged in against replica A, the admin presses Connect through
replica B, python-fido2 registers at a test RP through the tool, Disconnect through B removes the
key. The replicas reach each other only through PostgreSQL (LISTEN/NOTIFY and presence rows).

Needs KEYWARD_TEST_POSTGRES_URL (scripts/with-postgres.sh sets it) and `psql`; skipped without the
variable, except under CI, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialUserEntity

from conftest import Api, PairTool, Server
from test_pair_e2e import RP, client_for
from udp_hid import open_device


def fresh_database() -> str:
    base = os.environ.get("KEYWARD_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("KEYWARD_TEST_POSTGRES_URL is not set but CI is: the replica test must run")
        pytest.skip("KEYWARD_TEST_POSTGRES_URL is not set (run under scripts/with-postgres.sh)")
    psql = shutil.which("psql")
    if not psql:
        pytest.fail("psql is needed to create the test database")
    name = f"keyward_replicas_{uuid.uuid4().hex[:12]}"
    subprocess.run([psql, base, "-v", "ON_ERROR_STOP=1", "-q", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True, timeout=30)
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture
def replicas(tmp_path):
    """Replicas A and B: one data directory (one vault key), one database, two processes."""
    database = fresh_database()
    a, b = Server(tmp_path), Server(tmp_path)
    for s in (a, b):
        s.env["KEYWARD_DATABASE_URL"] = database
    a.cli("org", "create", "Replico")
    a.cli("admin", "create", "--org", "Replico", "--email", "admin@replico.test", "--role", "admin",
          stdin="a long admin password\n")
    token = a.cli("token", "create", "--email", "admin@replico.test", "--name", "replicas")
    a.start()
    b.start()
    yield a, b, token
    b.stop()
    a.stop()


def test_connect_through_b_reaches_the_tool_on_a(replicas, tmp_path):
    a, b, token = replicas
    api_b = Api(b.base, token)
    status, user = api_b.call("POST", "/users", {"upn": "bob@replico.test", "display_name": "Bob"})
    assert status == 201, user
    status, key = api_b.call("POST", f"/users/{user['id']}/key")
    assert status == 201, key

    tool = PairTool(tmp_path / "pair-admin", a.base)
    done = tool.cmd("login", "--server", a.base, "--token-stdin", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    tool.run()
    try:
        tool.wait_for("connected as admin")
        status, devices = api_b.call("GET", "/pair/devices")
        assert status == 200 and [d["online"] for d in devices["items"]] == [True], devices

        started = time.monotonic()
        status, session = api_b.call("POST", f"/users/{user['id']}/connect")
        assert status == 201, session
        tool.wait_for("connected (Delegated", timeout=1.0)  # within a second, across replicas
        print(f"connect through B reached the tool on A in {time.monotonic() - started:.3f} s")

        rp = Fido2Server(RP, attestation="direct")
        options, state = rp.register_begin(
            PublicKeyCredentialUserEntity(id=b"bob-handle", name="bob@replico.test", display_name="Bob"),
            user_verification="discouraged",
        )
        reg = client_for(tool.address).make_credential(options.public_key)
        assert rp.register_complete(state, reg).credential_data is not None

        # Both replicas see the credential, created on the user's behalf by the admin.
        for api in (api_b, Api(a.base, token)):
            status, creds = api.call("GET", f"/users/{user['id']}/credentials")
            assert status == 200, creds
            mine = [c for c in creds["items"] if c["rp_id"] == RP.id]
            assert len(mine) == 1 and mine[0]["via"] == "delegated", creds

        started = time.monotonic()
        status, _ = api_b.call("DELETE", f"/users/{user['id']}/connect")
        assert status == 204
        tool.wait_for("key disconnected", timeout=1.0)
        print(f"disconnect through B reached the tool on A in {time.monotonic() - started:.3f} s")
        with pytest.raises(CtapError) as e:
            Ctap2(open_device(tool.address))
        assert e.value.code == CtapError.ERR.NOT_ALLOWED
    finally:
        tool.stop()


def test_a_tool_that_stopped_is_offline_for_every_replica(replicas, tmp_path):
    a, b, token = replicas
    api_b = Api(b.base, token)
    status, user = api_b.call("POST", "/users", {"upn": "carol@replico.test"})
    assert status == 201, user
    assert api_b.call("POST", f"/users/{user['id']}/key")[0] == 201
    tool = PairTool(tmp_path / "pair-admin", a.base)
    assert tool.cmd("login", "--server", a.base, "--token-stdin", stdin=token + "\n").returncode == 0
    tool.run()
    tool.wait_for("connected as admin")
    tool.stop()
    deadline = time.time() + 5
    while True:
        status, problem = api_b.call("POST", f"/users/{user['id']}/connect")
        if status == 409:
            break
        assert time.time() < deadline, (status, problem)
        time.sleep(0.1)
    assert "keyward-pair" in problem["detail"]


def test_connect_to_a_tool_on_a_killed_replica_says_so_at_once(replicas, tmp_path):
    """Replica A is killed (-9) while it holds the admin's tool: for up to one presence lease its
    rows still look fresh, but Connect through B must not claim success. It answers within about
    the acknowledgement timeout that the tool's server did not answer, and leaves no session."""
    a, b, token = replicas
    api_b = Api(b.base, token)
    status, user = api_b.call("POST", "/users", {"upn": "dave@replico.test"})
    assert status == 201, user
    assert api_b.call("POST", f"/users/{user['id']}/key")[0] == 201
    tool = PairTool(tmp_path / "pair-admin", a.base)
    assert tool.cmd("login", "--server", a.base, "--token-stdin", stdin=token + "\n").returncode == 0
    tool.run()
    try:
        tool.wait_for("connected as admin")
        assert a.proc is not None
        a.proc.kill()  # SIGKILL: no cleanup, presence rows and heartbeat left as they were
        a.proc.wait()
        status, devices = api_b.call("GET", "/pair/devices")
        assert status == 200 and [d["online"] for d in devices["items"]] == [True], \
            "within the lease the killed replica's tool still looks online"
        started = time.monotonic()
        status, problem = api_b.call("POST", f"/users/{user['id']}/connect")
        took = time.monotonic() - started
        print(f"connect through B to a tool on killed replica A answered {status} in {took:.3f} s")
        assert status == 409, problem
        assert "did not answer" in problem["detail"], problem
        assert took < 3.0, took
        status, audit = api_b.call("GET", "/audit?action=relay.connect_failed")
        assert status == 200, audit
        assert [e["target"] for e in audit["items"]] == [f"user:{user['id']}"], audit
        # No session was left behind: Disconnect has nothing to end (no relay.disconnect entry).
        assert api_b.call("DELETE", f"/users/{user['id']}/connect")[0] == 204
        status, audit = api_b.call("GET", "/audit?action=relay.disconnect")
        assert status == 200 and audit["items"] == [], audit
    finally:
        tool.stop()
