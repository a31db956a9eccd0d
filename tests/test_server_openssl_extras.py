"""The two OpenSSL functions found in cryptography's library (server/openssl_extras.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtlskit.server import openssl_engine, openssl_extras
from mtlskit.server.tlsstate import build_state

pytestmark = pytest.mark.skipif(not openssl_engine.AVAILABLE, reason="no bundled OpenSSL")


def test_found_and_checked_on_this_platform() -> None:
    # Linux wheels of cryptography keep their symbol table; it checked each function.
    assert openssl_extras.find_session_cache_functions() is not None


def test_the_session_cache_is_bounded(seed_certs_p256: Path) -> None:
    extras = openssl_extras.find_session_cache_functions()
    assert extras is not None
    c = seed_certs_p256
    lib = openssl_engine.lib
    state = build_state(c / "server.crt", c / "server.key", c / "ca.crt", session_cache=16)
    assert state.engine_context is not None
    ctx = state.engine_context.ptr
    assert extras.session_cache_size(ctx) == 16
    assert lib.SSL_CTX_get_options(ctx) & lib.SSL_OP_NO_TICKET  # stateful tickets
    default = build_state(c / "server.crt", c / "server.key", c / "ca.crt")
    assert default.engine_context is not None
    assert extras.session_cache_size(default.engine_context.ptr) == 4096


def test_no_cache_means_stateless_tickets(seed_certs_p256: Path) -> None:
    c = seed_certs_p256
    lib = openssl_engine.lib
    state = build_state(c / "server.crt", c / "server.key", c / "ca.crt", session_cache=0)
    assert state.engine_context is not None
    assert not lib.SSL_CTX_get_options(state.engine_context.ptr) & lib.SSL_OP_NO_TICKET


def test_a_file_without_symbols_finds_nothing(tmp_path: Path) -> None:
    wanted = {"x": (re.compile(rb"\x00(SSL_CTX_ctrl)\x00"), 2)}
    not_elf = tmp_path / "lib.so"
    not_elf.write_bytes(b"\x00" * 4096)
    assert openssl_extras._symbols(not_elf, wanted) == {}
