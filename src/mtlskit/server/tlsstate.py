"""The server's current TLS state, swapped atomically on reload.

Every accepted connection reads :attr:`ContextHolder.current` once and keeps that
:class:`TLSState` for its lifetime, so a reload changes only new handshakes.
:meth:`ContextHolder.reload` builds a complete new state from the files first and
swaps it in one assignment; on failure the old state keeps serving (as
ghostunnel's ``certloader`` does). Never mutate a live context to remove trust.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtlskit.errors import ConfigError, MtlsError, PKIError
from mtlskit.server import openssl_engine
from mtlskit.server.engine import StdlibSession, TLSSession
from mtlskit.server.stats import Stats
from mtlskit.tls import server_context

__all__ = [
    "ContextHolder",
    "TLSState",
    "cipher_suite_id",
    "default_engine_selected",
    "engine_description",
    "tls_version_id",
]

log = logging.getLogger("mtlskit.server")

PathLike = str | os.PathLike[str]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class TLSState:
    """One immutable snapshot: the SSLContext and what was loaded into it."""

    context: ssl.SSLContext
    server_cert_pem: str  # the leaf the server presents (ASGI TLS extension "server_cert")
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None
    loaded_at: float = field(default_factory=time.time)
    # The same policy on the OpenSSL that cryptography bundles (server/openssl_engine.py);
    # None: the stdlib ssl module serves (MTLSKIT_TLS_ENGINE=stdlib, or no bindings).
    engine_context: openssl_engine.OpenSSLContext | None = None

    def new_session(self) -> TLSSession:
        """The TLS engine for one new connection (the seam for another engine)."""
        if self.engine_context is not None:
            return openssl_engine.OpenSSLSession(self.engine_context)
        return StdlibSession(self.context)


def default_engine_selected() -> bool:
    """True when the OpenSSL that cryptography bundles serves (server/openssl_engine.py),
    False for the stdlib ``ssl`` engine.

    ``MTLSKIT_TLS_ENGINE=stdlib`` selects the stdlib ``ssl`` module; ``openssl`` (or
    unset) the default, which falls back to stdlib when the bindings lack a function.
    """
    choice = os.environ.get("MTLSKIT_TLS_ENGINE", "")
    if choice not in ("", "openssl", "stdlib"):
        raise ConfigError(
            f"MTLSKIT_TLS_ENGINE={choice!r} is not a TLS engine", hint="use openssl or stdlib"
        )
    return choice != "stdlib" and openssl_engine.AVAILABLE


def engine_description() -> str:
    """One line for the start-up log: which TLS engine, on which OpenSSL, and why."""
    if default_engine_selected():
        import cryptography

        return (
            f"TLS engine: {openssl_engine.openssl_version()} "
            f"(bundled with cryptography {cryptography.__version__})"
        )
    why = (
        "MTLSKIT_TLS_ENGINE=stdlib"
        if os.environ.get("MTLSKIT_TLS_ENGINE") == "stdlib"
        else f"fallback: {openssl_engine.UNAVAILABLE_REASON}"
    )
    return f"TLS engine: Python's ssl module, {ssl.OPENSSL_VERSION} ({why})"


def _first_pem_certificate(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read certificate: {exc.strerror}", file=path) from exc
    m = _PEM_CERT.search(data)
    return m.group(0).decode("ascii") + "\n" if m else ""


def build_state(
    cert: PathLike,
    key: PathLike,
    ca: PathLike,
    *,
    crl: PathLike | None = None,
    stateful_tickets: bool = True,
    require_client_cert: bool = True,
    any_client_purpose: bool = False,
    client_ca_names: bool = True,
) -> TLSState:
    """A :class:`TLSState` from files; raises :class:`~mtlskit.errors.PKIError`.

    ``require_client_cert=False``: a client may come without a certificate (both
    engines copy the verify mode from the policy context); one it sends is verified.
    ``any_client_purpose``: a client certificate need not allow clientAuth (the CA
    service renews server-only certificates over mTLS); the default engine only.
    ``client_ca_names``: name the CAs of ``ca`` in the CertificateRequest; the default
    engine only (the ``ssl`` module cannot).
    """
    default_engine = default_engine_selected()
    # The default engine checks the CRL itself (server/revocation.py): the ssl context,
    # then used only as the policy, need not load it (28 MiB for 100,000 entries).
    ctx = server_context(
        cert,
        key,
        ca,
        crl=None if default_engine else crl,
        require_client_cert=require_client_cert,
    )
    engine_context = None
    if default_engine:
        engine_context = openssl_engine.context_from(
            ctx,
            cert,
            key,
            ca,
            crl=crl,
            stateful_tickets=stateful_tickets,
            any_client_purpose=any_client_purpose,
            client_ca_names=client_ca_names,
        )
    return TLSState(
        context=ctx,
        engine_context=engine_context,
        server_cert_pem=_first_pem_certificate(Path(cert)),
        cert=Path(cert),
        key=Path(key),
        ca=Path(ca),
        crl=Path(crl) if crl is not None else None,
    )


class ContextHolder:
    """Holds the current :class:`TLSState`; :meth:`reload` swaps it atomically."""

    def __init__(
        self,
        cert: PathLike,
        key: PathLike,
        ca: PathLike,
        *,
        crl: PathLike | None = None,
        stats: Stats | None = None,
        build: Callable[..., TLSState] = build_state,
        stateful_tickets: bool = True,
        require_client_cert: bool = True,
        any_client_purpose: bool = False,
        client_ca_names: bool = True,
    ) -> None:
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca)
        self.require_client_cert = require_client_cert
        self.any_client_purpose = any_client_purpose
        self.client_ca_names = client_ca_names
        self.crl = Path(crl) if crl is not None else None
        self.stats = stats if stats is not None else Stats()
        self._build = build
        self.stateful_tickets = stateful_tickets
        self.last_error: MtlsError | None = None
        self.current: TLSState = self._new_state()

    def _new_state(self) -> TLSState:
        options: dict[str, bool] = {}  # only those not at their default: a custom build
        if not self.require_client_cert:  # (tests) need not know them
            options["require_client_cert"] = False
        if self.any_client_purpose:
            options["any_client_purpose"] = True
        if not self.stateful_tickets:
            options["stateful_tickets"] = False
        if not self.client_ca_names:
            options["client_ca_names"] = False
        return self._build(
            self.cert,
            self.key,
            self.ca,
            crl=self.crl,
            **options,
        )

    @property
    def context(self) -> ssl.SSLContext:
        return self.current.context

    def reload(self) -> TLSState:
        """Build a new state from the files and swap it in; on failure keep the old one.

        Raises the :class:`~mtlskit.errors.MtlsError` that stopped the new state,
        after logging it as one line.
        """
        try:
            state = self._new_state()
        except MtlsError as exc:
            self.last_error = exc
            self.stats.reloads_failed += 1
            log.warning("reload refused, still serving the previous certificates: %s", exc)
            raise
        self.current = state  # one assignment: atomic for every reader
        self.last_error = None
        self.stats.reloads_ok += 1
        log.info("reloaded certificates from %s", self.cert.parent)
        return state

    def try_reload(self) -> bool:
        """:meth:`reload` that reports failure as False (already logged)."""
        try:
            self.reload()
        except MtlsError:
            return False
        return True


_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_CIPHER_IDS: dict[str, int] = {}


def tls_version_id(name: str | None) -> int | None:
    """``TLSv1.3`` -> 0x0304, as the ASGI TLS extension wants."""
    return _VERSIONS.get(name) if name else None


def cipher_suite_id(name: str | None) -> int | None:
    """The IANA number of an OpenSSL cipher suite name (``TLS_AES_128_GCM_SHA256`` -> 0x1301)."""
    if not name:
        return None
    if not _CIPHER_IDS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("ALL")
        for c in ctx.get_ciphers():
            # OpenSSL ids are 0x0300XXXX; the low 16 bits are the IANA code point.
            _CIPHER_IDS[str(c["name"])] = int(c["id"]) & 0xFFFF
    return _CIPHER_IDS.get(name)
