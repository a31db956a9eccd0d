"""Client affinity for ``--workers N``: a client's connections go to the same worker.

Each worker keeps its own TLS sessions (the default engine's stateful tickets, or
ticket keys that diverge at the first rotation), and SO_REUSEPORT hands each new
connection to a worker chosen by a hash of its addresses *and ports*: a
returning client reached the worker holding its session 1 time in N, so with
``--workers 2`` half of the resumptions became full handshakes.

A classic BPF program attached to the listening sockets with
``SO_ATTACH_REUSEPORT_CBPF`` (socket(7), Linux ≥ 4.5) picks the worker instead:
it hashes the client's IP address only (IPv4, or the 16 bytes of IPv6), so all
connections from one address land on one worker, which holds its sessions. The
program returns an index into the port's group of sockets; an index past the
sockets there are (a worker not listening yet, or gone) makes the kernel fall back
to its own hash. The trade-off: clients behind one address (a NAT, a proxy, a
load balancer) all land on one worker, so that worker's CPU is their ceiling;
``--no-worker-affinity`` spreads them again (and resumes 1 time in N).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Any

__all__ = ["SO_ATTACH_REUSEPORT_CBPF", "attach_client_affinity", "client_affinity_program"]

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # asm-generic/socket.h

# linux/bpf_common.h and linux/filter.h
_LD, _ALU, _JMP, _RET, _MISC = 0x00, 0x04, 0x05, 0x06, 0x07
_W, _B = 0x00, 0x10
_ABS = 0x20
_RSH, _MOD, _XOR = 0x70, 0x90, 0xA0
_K, _X = 0x00, 0x08
_JA, _JEQ = 0x00, 0x10
_RET_A = 0x10
_TAX = 0x00
_NET = -0x100000 & 0xFFFFFFFF  # SKF_NET_OFF: offsets from the IP header of the SYN


def client_affinity_program(workers: int) -> list[tuple[int, int, int, int]]:
    """The program, as (code, jt, jf, k): the client's address folded to 32 bits, then
    folded to its low byte, modulo ``workers``."""
    if workers < 1:
        raise ValueError("workers must be 1 or more")
    ld_byte = _LD | _B | _ABS
    ld_word = _LD | _W | _ABS
    tax = (_MISC | _TAX, 0, 0, 0)
    xor_x = (_ALU | _XOR | _X, 0, 0, 0)
    return [
        (ld_byte, 0, 0, _NET + 0),  # 0: version and header length
        (_ALU | _RSH | _K, 0, 0, 4),  # 1: the IP version
        (_JMP | _JEQ | _K, 2, 0, 6),  # 2: IPv6: to 5
        (ld_word, 0, 0, _NET + 12),  # 3: IPv4 source address
        (_JMP | _JA, 0, 0, 10),  # 4: to 15
        (ld_word, 0, 0, _NET + 8),  # 5: IPv6 source address, its four words xor-ed
        tax,
        (ld_word, 0, 0, _NET + 12),
        xor_x,
        tax,
        (ld_word, 0, 0, _NET + 16),
        xor_x,
        tax,
        (ld_word, 0, 0, _NET + 20),
        xor_x,  # 14
        tax,  # 15: A ^= A >> 16; A ^= A >> 8: every byte counts in the low ones
        (_ALU | _RSH | _K, 0, 0, 16),
        xor_x,
        tax,
        (_ALU | _RSH | _K, 0, 0, 8),
        xor_x,
        (_ALU | _MOD | _K, 0, 0, workers),  # 21: the index of a socket in the group
        (_RET | _RET_A, 0, 0, 0),
    ]


def attach_client_affinity(sock: Any, workers: int) -> None:
    """Steer the SO_REUSEPORT group of ``sock`` (a listening socket, or asyncio's view of
    one) by client address over ``workers`` sockets. Raises OSError where the kernel
    cannot (not Linux, Linux < 4.5)."""
    if sys.platform != "linux":
        raise OSError(errno.ENOPROTOOPT, "SO_ATTACH_REUSEPORT_CBPF is Linux only")
    program = client_affinity_program(workers)
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    filters = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native layout;
    # the kernel copies the program during setsockopt.
    fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
