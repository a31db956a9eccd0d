"""`mtlskit serve` with an experimental TLS engine patched in behind the seam.

    python bench/experiments/serve_variant.py --engine openssl4 -- serve --certs DIR ...

Lets the bench measure a TLS engine in the real server before it is merged.
"""

from __future__ import annotations

import os
import sys


def patch_break_parser_cycle() -> None:
    """Drop the httptools parser when the connection is gone (it refers to the protocol)."""
    from mtlskit.server import protocol

    original = protocol.BaseProtocol.connection_lost

    def connection_lost(self: protocol.BaseProtocol, exc: Exception | None) -> None:
        original(self, exc)
        self.parser = None

    protocol.BaseProtocol.connection_lost = connection_lost  # type: ignore[method-assign]


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--engine"]:
        engine, args = args[1], args[2:]
        for part in engine.split("+"):
            if part == "openssl4":
                pass  # the server's default engine since it moved to src/mtlskit/server/openssl_engine.py
            elif part == "stdlib":  # the server's stdlib ssl engine (default: bundled OpenSSL)
                os.environ["MTLSKIT_TLS_ENGINE"] = "stdlib"
            elif part == "nocycle":
                patch_break_parser_cycle()
    if args[:1] == ["--"]:
        args = args[1:]
    from mtlskit.cli import run

    sys.argv = ["mtlskit", *args]
    run()


if __name__ == "__main__":
    main()
