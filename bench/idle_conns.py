"""Open N mTLS connections to a server and hold them idle, for its memory per connection.

Each connection completes the handshake and one keep-alive GET (so the server
has surely finished its side of the handshake), then sits idle. When all are
open, one JSON line goes to stdout; the program then waits for stdin to close,
checks how many connections are still open, prints a second JSON line and exits.

    python bench/idle_conns.py --port 8443 --certs certs -n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
from pathlib import Path

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def _open_one(
    host: str, port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname="localhost", ssl_handshake_timeout=30
    )
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return reader, writer


async def _main(args: argparse.Namespace) -> None:
    certs = Path(args.certs)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.load_cert_chain(certs / "client.crt", certs / "client.key")
    # Python 3.13's strict mode rejects the seed's CA (plain openssl req -x509).
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)

    gate = asyncio.Semaphore(args.concurrency)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                held.append(await _open_one(args.host, args.port, ctx))
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    report = {
        "open": len(held),
        "failed": len(errors),
        "first_error": errors[0] if errors else "",
        "open_seconds": round(time.monotonic() - t0, 2),
    }
    print(json.dumps(report), flush=True)

    # Hold until the parent has read the server's memory (it closes our stdin).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    alive = sum(1 for reader, _ in held if not reader.at_eof())
    print(json.dumps({"alive": alive}), flush=True)
    for _, writer in held:
        writer.transport.abort()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--certs", default="certs")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.n = min(args.n, hard - 64)
    try:
        import uvloop

        uvloop.run(_main(args))
    except ImportError:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
