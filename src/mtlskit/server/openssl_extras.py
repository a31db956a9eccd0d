"""Two OpenSSL functions that cryptography's bindings leave out, found in its own library.

cryptography links OpenSSL statically into ``_rust.abi3.so`` and binds about 550 of
its functions through cffi. ``SSL_CTX_ctrl`` (here: the session cache size) and
``SSL_CTX_set_num_tickets`` are not among them, yet the server needs both to keep
stateful TLS 1.3 sessions bounded: one ticket per handshake and a capped cache.

The wheel keeps its ELF symbol table, so a function's address is the library's load
address plus its symbol value. That table is trusted only when it agrees exactly with
two addresses the bindings do return (``BIO_s_mem()`` and ``TLS_server_method()``,
static objects of the same library), and each function is checked once on a scratch
context (the cache size reads back; the cache mode matches the bound getter). On any
mismatch, a stripped build or another platform, :func:`find_session_cache_functions`
returns None and the engine uses stateless tickets instead (server/openssl_engine.py).
"""

from __future__ import annotations

import mmap
import re
import struct
import sys
from functools import cache
from pathlib import Path
from typing import Any

try:
    from cryptography.hazmat.bindings import _rust
    from cryptography.hazmat.bindings.openssl.binding import Binding

    _BINDINGS_IMPORTED = True
except ImportError:  # pragma: no cover - a cryptography that moved them: nothing is found
    _BINDINGS_IMPORTED = False

__all__ = ["SessionCacheFunctions", "find_session_cache_functions"]

_SSL_CTRL_SET_SESS_CACHE_SIZE = 42  # ssl.h
_SSL_CTRL_GET_SESS_CACHE_SIZE = 43
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_STT_OBJECT, _STT_FUNC = 1, 2


class SessionCacheFunctions:
    """``SSL_CTX_ctrl`` for the session cache and ``SSL_CTX_set_num_tickets``, as found in
    the library: callable wrappers around cffi function pointers."""

    def __init__(self, ffi: Any, base: int, values: dict[str, int]) -> None:
        self._ctrl = ffi.cast("long (*)(SSL_CTX *, int, long, void *)", base + values["ctrl"])
        self._tickets = ffi.cast("int (*)(SSL_CTX *, size_t)", base + values["tickets"])
        self._null = ffi.NULL

    def set_session_cache_size(self, ctx: Any, size: int) -> None:
        self._ctrl(ctx, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, self._null)

    def session_cache_size(self, ctx: Any) -> int:
        return int(self._ctrl(ctx, _SSL_CTRL_GET_SESS_CACHE_SIZE, 0, self._null))

    def session_cache_mode(self, ctx: Any) -> int:
        return int(self._ctrl(ctx, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, self._null))

    def set_num_tickets(self, ctx: Any, n: int) -> bool:
        return int(self._tickets(ctx, n)) == 1


def _symbols(path: Path, wanted: dict[str, tuple[re.Pattern[bytes], int]]) -> dict[str, int]:
    """The values of the wanted symbols (each must match exactly one name and type)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _read_symbols(data, wanted)


def _read_symbols(
    data: mmap.mmap, wanted: dict[str, tuple[re.Pattern[bytes], int]]
) -> dict[str, int]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELF64, little-endian
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
    if symtab is None:
        return {}  # stripped
    strtab = sections[symtab[6]]
    names = data[strtab[4] : strtab[4] + strtab[5]]
    offsets: dict[int, str] = {}
    for key, (pattern, _) in wanted.items():
        for m in pattern.finditer(names):
            offsets[m.start(1)] = key
    found: dict[str, list[int]] = {key: [] for key in wanted}
    table = data[symtab[4] : symtab[4] + symtab[5]]
    for st_name, st_info, _other, shndx, value, _size in struct.iter_unpack("<IBBHQQ", table):
        name = offsets.get(st_name)
        if name is not None and shndx != 0 and st_info & 0xF == wanted[name][1]:
            found[name].append(value)
    return {key: values[0] for key, values in found.items() if len(values) == 1}


@cache
def find_session_cache_functions() -> SessionCacheFunctions | None:
    """The functions, once per process; None when they cannot be found safely."""
    if not _BINDINGS_IMPORTED:
        return None
    try:
        binding = Binding()
        lib, ffi = binding.lib, binding.ffi
        path = Path(_rust.__file__ or "")
        if sys.byteorder != "little" or not path.is_file():
            return None
        wanted = {
            "ctrl": (re.compile(rb"\x00(SSL_CTX_ctrl)\x00"), _STT_FUNC),
            "tickets": (re.compile(rb"\x00(SSL_CTX_set_num_tickets)\x00"), _STT_FUNC),
            "mem": (re.compile(rb"\x00(mem_method)\x00"), _STT_OBJECT),
            "server": (re.compile(rb"\x00(TLS_server_method_data(?:\.\d+)?)\x00"), _STT_OBJECT),
        }
        values = _symbols(path, wanted)
        if set(values) != set(wanted):
            return None
        base = int(ffi.cast("uintptr_t", lib.BIO_s_mem())) - values["mem"]
        if int(ffi.cast("uintptr_t", lib.TLS_server_method())) != base + values["server"]:
            return None  # the table does not describe the library that is loaded
        functions = SessionCacheFunctions(ffi, base, values)
        return functions if _works(functions, lib, ffi) else None
    except (OSError, ValueError, struct.error, AttributeError):
        return None


def _works(functions: SessionCacheFunctions, lib: Any, ffi: Any) -> bool:
    """Each function does what it should, on a scratch context."""
    ctx = lib.SSL_CTX_new(lib.TLS_server_method())
    if ctx == ffi.NULL:
        return False
    try:
        if functions.session_cache_mode(ctx) != lib.SSL_CTX_get_session_cache_mode(ctx):
            return False
        functions.set_session_cache_size(ctx, 1234)
        return functions.session_cache_size(ctx) == 1234 and functions.set_num_tickets(ctx, 1)
    finally:
        lib.SSL_CTX_free(ctx)
