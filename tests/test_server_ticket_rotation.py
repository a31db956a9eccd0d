"""Session resumption is on by default, and the ticket keys rotate (--ticket-key-rotation)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import client_ctx, fetch_tls13, start_serve


@pytest.mark.parametrize("engine", ["default", "default-stateless", "stdlib"])
def test_tickets_resume_until_the_keys_rotate(
    engine: str,
    seed_certs_p256: Path,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Default engine: stateful tickets (a session cache), or stateless with
    --session-tickets stateless; stdlib engine: stateless. All resume, none outlives a
    rotation."""
    env = {k: v for k, v in os.environ.items() if k != "MTLSKIT_TLS_ENGINE"}
    if engine == "stdlib":
        env["MTLSKIT_TLS_ENGINE"] = "stdlib"
    extra = ["--session-tickets", "stateless"] if engine == "default-stateless" else []
    s = start_serve(
        procs, seed_certs_p256, tmp_path, "--quiet", "--ticket-key-rotation", "2", *extra, env=env
    )
    ctx = client_ctx(seed_certs_p256)
    # Right after a rotation, so that the next one is about 2 s away.
    s.wait_log("reloaded certificates", timeout=10)
    rotations = s.log().count("reloaded certificates")
    _, session = fetch_tls13(s.port, ctx, None)
    assert fetch_tls13(s.port, ctx, session)[0], "resumption must be on by default"
    deadline = time.monotonic() + 10
    while s.log().count("reloaded certificates") == rotations:
        assert time.monotonic() < deadline, s.log()
        time.sleep(0.05)
    assert not fetch_tls13(s.port, ctx, session)[0], "a ticket must not outlive its key"
    _, fresh = fetch_tls13(s.port, ctx, None)
    assert fetch_tls13(s.port, ctx, fresh)[0]
    assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_ticket_key_rotation_must_not_be_negative(tmp_path: Path) -> None:
    from tests.support.processes import run_cli

    r = run_cli("serve", "--certs", tmp_path, "--ticket-key-rotation", "-1")
    assert r.returncode == 2
    assert r.stderr.startswith("error: --ticket-key-rotation") and r.stderr.count("\n") == 1


def test_session_cache_must_not_be_negative(tmp_path: Path) -> None:
    from tests.support.processes import run_cli

    r = run_cli("serve", "--certs", tmp_path, "--session-cache", "-1")
    assert r.returncode == 2
    assert "--session-cache" in r.stderr and r.stderr.count("\n") == 1


def test_session_cache_is_deprecated_and_still_means_what_it_did(
    seed_certs_p256: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """--session-cache 0 was stateless tickets and still is; N > 0 cannot size OpenSSL's
    cache through the bindings' exports any more: stateful, with a one-line warning."""
    from mtlskit.server import openssl_engine
    from tests.support.processes import run_cli

    s = start_serve(procs, seed_certs_p256, tmp_path, "--quiet", "--session-cache", "0")
    s.wait_log("--session-cache is deprecated: use --session-tickets stateless (the number")
    ctx = client_ctx(seed_certs_p256)
    _, session = fetch_tls13(s.port, ctx, None)
    assert fetch_tls13(s.port, ctx, session)[0]
    assert s.stop() == 0
    r = run_cli(
        "serve", "--certs", tmp_path, "--session-cache", "0", "--session-tickets", "stateful"
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: --session-cache 0 contradicts --session-tickets stateful")
    lib = openssl_engine.lib
    from mtlskit.server.tlsstate import build_state

    c = seed_certs_p256
    for stateful in (True, False):
        state = build_state(
            c / "server.crt", c / "server.key", c / "ca.crt", stateful_tickets=stateful
        )
        assert state.engine_context is not None
        no_ticket = lib.SSL_CTX_get_options(state.engine_context.ptr) & lib.SSL_OP_NO_TICKET
        assert bool(no_ticket) == stateful  # stateful TLS 1.3 tickets: OpenSSL's cache
