"""Experiment: the floor of a Python mTLS hello-world server, per TLS engine and event loop.

A minimal asyncio Protocol that drives TLS over memory BIOs and answers every
request with the seed's body, to learn what the TLS engine costs before
touching the real server:

    python bench/experiments/engines.py --engine stdlib|pyopenssl|transport \\
        --loop uvloop|asyncio --certs DIR --port P

- stdlib:    ssl.SSLObject over ssl.MemoryBIO (the system OpenSSL, 3.0 here)
- pyopenssl: OpenSSL.SSL.Connection with memory BIOs (the OpenSSL the
             cryptography wheel bundles, 4.0 here)
- transport: the event loop's own TLS transport (loop.create_server(ssl=...))

Compare with: python bench/experiments/compare_engines.py
The pyopenssl and cffi variants need pyOpenSSL (`.venv/bin/pip install pyopenssl`); it is
not a dependency of mtlskit (the server's engine uses cryptography's bindings directly).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path
from typing import Any

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 13\r\n\r\nhello world \n"
)


def _requests(buf: bytearray) -> int:
    """Count complete header blocks (GETs without bodies) and drop them from buf."""
    n = 0
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return n
        del buf[: end + 4]
        n += 1


class StdlibProtocol(asyncio.Protocol):
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
                self.handshaken = True
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError:
                self._flush()
                self.transport.close()
                return
        try:
            while True:
                chunk = self.tls.read(65536)
                if not chunk:  # close_notify: read() returns b"", it does not raise
                    self._flush()
                    self.transport.close()
                    return
                self.buf += chunk
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, ssl.SSLZeroReturnError):
            self.transport.close()
            return
        n = _requests(self.buf)
        if n:
            self.tls.write(RESPONSE * n)
        self._flush()

    def _flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.transport.write(out)


class PyOpenSSLProtocol(asyncio.Protocol):
    def __init__(self, ctx: Any) -> None:
        from OpenSSL import SSL

        self.SSL = SSL
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_accept_state()
        self.handshaken = False
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        SSL = self.SSL
        self.tls.bio_write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
                self.handshaken = True
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error:
                self._flush()
                self.transport.close()
                return
        try:
            while True:
                self.buf += self.tls.recv(65536)
        except SSL.WantReadError:
            pass
        except (SSL.Error, SSL.ZeroReturnError):
            self.transport.close()
            return
        n = _requests(self.buf)
        if n:
            self.tls.sendall(RESPONSE * n)
        self._flush()

    def _flush(self) -> None:
        try:
            out = self.tls.bio_read(262144)
        except self.SSL.WantReadError:
            return
        if out:
            self.transport.write(out)


class CffiProtocol(asyncio.Protocol):
    """pyOpenSSL's context, but each connection driven through the cffi bindings directly:
    no exception per WANT_READ, one shared buffer, SSL_MODE_RELEASE_BUFFERS."""

    def __init__(self, ctx_ptr: Any, lib: Any, ffi: Any, buf: Any) -> None:
        self.lib, self.ffi, self.cbuf = lib, ffi, buf
        ssl_ = lib.SSL_new(ctx_ptr)
        self.ssl = ffi.gc(ssl_, lib.SSL_free)
        self.rbio = lib.BIO_new(lib.BIO_s_mem())
        self.wbio = lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(ssl_, self.rbio, self.wbio)
        lib.SSL_set_mode(ssl_, lib.SSL_MODE_RELEASE_BUFFERS)
        lib.SSL_set_accept_state(ssl_)
        self.handshaken = False
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        lib, ssl_ = self.lib, self.ssl
        lib.BIO_write(self.rbio, data, len(data))
        if not self.handshaken:
            r = lib.SSL_do_handshake(ssl_)
            if r != 1:
                err = lib.SSL_get_error(ssl_, r)
                self._flush()
                if err != lib.SSL_ERROR_WANT_READ:
                    lib.ERR_clear_error()
                    self.transport.close()
                return
            self.handshaken = True
        cbuf = self.cbuf
        while True:
            n = lib.SSL_read(ssl_, cbuf, 65536)
            if n > 0:
                self.buf += self.ffi.buffer(cbuf, n)
                continue
            err = lib.SSL_get_error(ssl_, n)
            if err == lib.SSL_ERROR_WANT_READ:
                break
            lib.ERR_clear_error()
            self._flush()
            self.transport.close()
            return
        n = _requests(self.buf)
        if n:
            out = RESPONSE * n
            lib.SSL_write(ssl_, out, len(out))
        self._flush()

    def _flush(self) -> None:
        lib, cbuf = self.lib, self.cbuf
        while True:
            n = lib.BIO_read(self.wbio, cbuf, 65536)
            if n <= 0:
                return
            self.transport.write(self.ffi.buffer(cbuf, n)[:])


class PlainProtocol(asyncio.Protocol):
    """Behind the loop's own TLS transport: only HTTP."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = _requests(self.buf)
        if n:
            self.transport.write(RESPONSE * n)


def stdlib_context(certs: Path, tickets: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    ctx.load_verify_locations(certs / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    ctx.num_tickets = tickets
    return ctx


def pyopenssl_context(certs: Path, tickets: int) -> Any:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(str(certs / "server.crt"))
    ctx.use_privatekey_file(str(certs / "server.key"))
    ctx.check_privatekey()
    ctx.load_verify_locations(str(certs / "ca.crt"))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    # session id context: required for resumption with client certificates
    ctx.set_session_id(b"mtlskit")
    if tickets == 0:  # no stateless tickets: TLS 1.3 resumption from the session cache
        ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    certs = Path(args.certs)
    if args.engine == "stdlib":
        sctx = stdlib_context(certs, args.tickets)
        server = await loop.create_server(
            lambda: StdlibProtocol(sctx), args.host, args.port, backlog=4096
        )
    elif args.engine == "pyopenssl":
        pctx = pyopenssl_context(certs, args.tickets)
        server = await loop.create_server(
            lambda: PyOpenSSLProtocol(pctx), args.host, args.port, backlog=4096
        )
    elif args.engine == "cffi":
        from OpenSSL._util import ffi, lib

        pctx = pyopenssl_context(certs, args.tickets)
        cbuf = ffi.new("char[]", 65536)
        ptr = pctx._context
        server = await loop.create_server(
            lambda: CffiProtocol(ptr, lib, ffi, cbuf), args.host, args.port, backlog=4096
        )
    else:
        sctx = stdlib_context(certs, args.tickets)
        server = await loop.create_server(
            PlainProtocol, args.host, args.port, ssl=sctx, backlog=4096
        )
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--engine", choices=["stdlib", "pyopenssl", "cffi", "transport"], default="stdlib"
    )
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--certs", default="certs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--tickets", type=int, default=2)
    args = p.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
