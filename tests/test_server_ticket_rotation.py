"""Session resumption is on by default, and the ticket keys rotate (--ticket-key-rotation)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_server_support import client_ctx, start_serve


def _fetch(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession]:
    """One request on a new connection: was ``session`` resumed, and the session it ends with."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.endswith(b"hello world \n")
        assert s.version() == "TLSv1.3"
        assert s.session is not None
        return s.session_reused, s.session


@pytest.mark.parametrize("engine", ["default", "stdlib"])
def test_tickets_resume_until_the_keys_rotate(
    engine: str,
    seed_certs_p256: Path,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    env = {**os.environ}
    if engine == "stdlib":
        env["MTLSKIT_TLS_ENGINE"] = "stdlib"
    s = start_serve(
        procs, seed_certs_p256, tmp_path, "--quiet", "--ticket-key-rotation", "2", env=env
    )
    ctx = client_ctx(seed_certs_p256)
    # Right after a rotation, so that the next one is about 2 s away.
    s.wait_log("reloaded certificates", timeout=10)
    rotations = s.log().count("reloaded certificates")
    _, session = _fetch(s.port, ctx, None)
    assert _fetch(s.port, ctx, session)[0], "resumption must be on by default"
    deadline = time.monotonic() + 10
    while s.log().count("reloaded certificates") == rotations:
        assert time.monotonic() < deadline, s.log()
        time.sleep(0.05)
    assert not _fetch(s.port, ctx, session)[0], "a ticket must not outlive its key"
    _, fresh = _fetch(s.port, ctx, None)
    assert _fetch(s.port, ctx, fresh)[0]
    assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_ticket_key_rotation_must_not_be_negative(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    r = run_cli("serve", "--certs", tmp_path, "--ticket-key-rotation", "-1")
    assert r.returncode == 2
    assert r.stderr.startswith("error: --ticket-key-rotation") and r.stderr.count("\n") == 1
