"""mtlskit: mutual TLS for Python services, batteries included.

The public surface is small; everything else is internal::

    from mtlskit import CA, server_context, client_context

``CA`` and the context factories are imported on first use (cryptography, ssl), so
``import mtlskit`` and ``mtlskit --help`` stay fast.
"""

from __future__ import annotations

from mtlskit.errors import (
    AlreadyExistsError,
    CertificateRefusedError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    HTTPStatusError,
    MtlsError,
    NameResolutionError,
    NetworkError,
    PeerVerificationError,
    PKIError,
    ProtocolError,
    ReadTimeout,
    RefusedError,
    ServerError,
    StorageError,
    Timeout,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "CA",
    "AlreadyExistsError",
    "CertificateRefusedError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "HTTPStatusError",
    "HandshakeError",
    "IssuedCert",
    "MtlsError",
    "NameResolutionError",
    "NetworkError",
    "PKIError",
    "PeerVerificationError",
    "ProtocolError",
    "ReadTimeout",
    "RefusedError",
    "ServerError",
    "StorageError",
    "Timeout",
    "VerificationError",
    "__version__",
    "client_context",
    "server_context",
]

# typing.TYPE_CHECKING without importing typing (several ms of every command's
# start-up): mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from mtlskit.pki.ca import CA, IssuedCert
    from mtlskit.tls import client_context, server_context

_LAZY = {
    "CA": "mtlskit.pki.ca",
    "IssuedCert": "mtlskit.pki.ca",
    "server_context": "mtlskit.tls",
    "client_context": "mtlskit.tls",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mtlskit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
