"""The one exception tree of mtlskit.

::

    MtlsError                  every error mtlskit raises on purpose
    ├── ConfigError            a bad option or argument (CLI exit 2)
    ├── PKIError               a key, certificate, CSR, CRL or file problem (exit 1)
    │   └── AlreadyExistsError a file would be overwritten without force
    ├── VerificationError      a certificate does not verify (exit 1)
    ├── HandshakeError         a TLS handshake with a peer failed (exit 1)
    ├── ServerError            the server could not start or serve (exit 1)
    ├── StorageError           the CA's database failed or cannot be reached (exit 1)
    └── RefusedError           the CA service refused a request (``status``: 400, 401,
                               403, 413, 429 …; exit 1)

Every error carries ``what`` (the message), an optional ``file`` it is about and
an optional ``hint`` (the next step). The CLI prints them as one line::

    error: <what> (<file>): <hint>
"""

from __future__ import annotations

import os

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "HandshakeError",
    "MtlsError",
    "PKIError",
    "RefusedError",
    "ServerError",
    "StorageError",
    "VerificationError",
]


class MtlsError(Exception):
    """Base of every mtlskit error."""

    exit_code = 1

    def __init__(
        self,
        what: str,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(what)
        self.what = what
        self.file = os.fspath(file) if file is not None else None
        self.hint = hint

    def one_line(self) -> str:
        """The error as the CLI prints it: ``<what> (<file>): <hint>``."""
        text = self.what
        if self.file:
            text += f" ({self.file})"
        if self.hint:
            text += f": {self.hint}"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(MtlsError):
    """A bad option or argument: the user asked for something impossible."""

    exit_code = 2


class PKIError(MtlsError):
    """A key, certificate, CSR, CRL or file cannot be used."""


class AlreadyExistsError(PKIError):
    """Writing would overwrite a file, and overwriting was not asked for."""


class VerificationError(MtlsError):
    """A certificate does not verify; ``reasons`` lists why in plain words."""

    def __init__(
        self,
        what: str,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: str | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        super().__init__(what, file=file, hint=hint)
        self.reasons = reasons or [what]


class HandshakeError(MtlsError):
    """A TLS handshake with a peer failed."""


class ServerError(MtlsError):
    """The server could not start or serve."""


class StorageError(MtlsError):
    """The CA's database (SQLite or PostgreSQL) failed; ``unavailable`` when unreachable,
    which a service answers with 503 and recovers from once the database is back."""

    def __init__(
        self,
        what: str,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: str | None = None,
        unavailable: bool = False,
    ) -> None:
        super().__init__(what, file=file, hint=hint)
        self.unavailable = unavailable


class RefusedError(MtlsError):
    """The CA service refused a request: a bad token, CSR or client certificate, a body
    too large, too many requests. ``status`` is the HTTP status the service answers with
    (and the client saw); ``retry_after`` the seconds to wait, for 429 and 503."""

    def __init__(
        self,
        what: str,
        *,
        status: int = 400,
        file: str | os.PathLike[str] | None = None,
        hint: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(what, file=file, hint=hint)
        self.status = status
        self.retry_after = retry_after
