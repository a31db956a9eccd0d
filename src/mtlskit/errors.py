"""The one exception tree of mtlskit, by stage.

::

    MtlsError                      every error mtlskit raises on purpose
    ├── ConfigError                a bad option or argument (CLI exit 2)
    ├── PKIError                   a key, certificate, CSR, CRL or file problem
    │   └── AlreadyExistsError     a file would be overwritten without force
    ├── VerificationError          a certificate does not verify
    │   └── PeerVerificationError  ... the peer's, in a handshake: we refused it (*)
    ├── NetworkError               no connection to the peer, or it broke
    │   ├── ConnectError           refused, unreachable
    │   ├── NameResolutionError    the host name does not resolve (DNS)
    │   └── Timeout                the peer took too long
    │       ├── ConnectTimeout     ... to accept the connection or finish the handshake
    │       └── ReadTimeout        ... to answer the request
    ├── HandshakeError             the TLS handshake (or the TLS session) failed
    │   ├── PeerVerificationError  we refused the peer's certificate (*)
    │   └── CertificateRefusedError  the peer refused our certificate, or wanted one
    ├── ProtocolError              the peer's answer is not valid HTTP, or there is none
    │                              (and ``Response.json()`` on a body that is not JSON)
    ├── HTTPStatusError            the peer answered 400 or more; ``.response`` is the answer
    ├── ServerError                the server could not start or serve
    ├── StorageError               the CA's database failed or cannot be reached
    └── RefusedError               the CA service refused a request (``status``: 400,
                                   401, 403, 413, 429 …)

    (*) one class under both: a refused server certificate is a failed handshake
        (``except HandshakeError`` catches both refusals) and a certificate that does
        not verify (``except VerificationError`` as before).

The client's network, TLS and HTTP failures are raised from one place,
:func:`mtlskit.connect.map_errors`; :class:`HTTPStatusError` from
``Response.raise_for_status()``. Until 0.1 every network and HTTP failure was a
``HandshakeError``; now ``except HandshakeError`` catches TLS failures only, and
``except MtlsError`` still catches everything. Every error is exit code 1 on the
command line except ConfigError (2).

Every error carries ``what`` (the message), an optional ``file`` it is about and
an optional ``hint`` (the next step). The CLI prints them as one line::

    error: <what> (<file>): <hint>

A message that names a setting the user can change holds it as a :class:`Setting`,
not as text: ``hint=("raise the timeout (", Setting("timeout"), ")")``. Python
callers read the keyword argument (``timeout=``), the command line reads its option
(``--timeout``): the CLI spells each setting with the option it declares under that
name (:meth:`MtlsError.one_line`). ``settings`` lists the names a message holds.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol, TypeAlias

    Text: TypeAlias = "str | tuple[str | Setting, ...]"
    Spelling: TypeAlias = Callable[[str], str | None]  # a setting's name -> its option, or None

    class ResponseLike(Protocol):
        """What HTTPStatusError carries: an :class:`mtlskit.client.Response`."""

        @property
        def url(self) -> str: ...
        @property
        def status(self) -> int: ...
        @property
        def reason(self) -> str: ...
        @property
        def headers(self) -> tuple[tuple[str, str], ...]: ...
        @property
        def body(self) -> bytes: ...
        @property
        def text(self) -> str: ...
        def json(self) -> Any: ...


__all__ = [
    "AlreadyExistsError",
    "CertificateRefusedError",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "HTTPStatusError",
    "HandshakeError",
    "MtlsError",
    "NameResolutionError",
    "NetworkError",
    "PKIError",
    "PeerVerificationError",
    "ProtocolError",
    "ReadTimeout",
    "RefusedError",
    "ServerError",
    "Setting",
    "StorageError",
    "Timeout",
    "VerificationError",
]


class Setting:
    """A setting named in a message, by its keyword argument in the Python API
    (``"ca"``, ``"timeout"``), optionally with a value (``Setting("certs", "DIR")``)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str | None = None) -> None:
        self.name = name
        self.value = value

    def spelled(self, option: str | None) -> str:
        """``name=value`` for Python; ``--option value`` with the command line's option."""
        if option is None:
            return f"{self.name}={self.value or ''}"
        return option if self.value is None else f"{option} {self.value}"


def _render(text: Text | None, spelling: Spelling | None) -> str | None:
    if text is None or isinstance(text, str):
        return text
    spell = spelling or (lambda name: None)
    return "".join(p if isinstance(p, str) else p.spelled(spell(p.name)) for p in text)


class MtlsError(Exception):
    """Base of every mtlskit error."""

    exit_code = 1

    def __init__(
        self,
        what: Text,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: Text | None = None,
    ) -> None:
        self._text = (what, hint)
        self.what: str = _render(what, None) or ""
        self.file = os.fspath(file) if file is not None else None
        self.hint = _render(hint, None)
        super().__init__(self.what)

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings the message names, e.g. ``("certs", "ca")``."""
        parts = [p for text in self._text if isinstance(text, tuple) for p in text]
        return tuple(p.name for p in parts if isinstance(p, Setting))

    def one_line(self, spelling: Spelling | None = None) -> str:
        """``<what> (<file>): <hint>``; ``spelling`` gives the CLI option for a setting."""
        what, hint = self._text
        text = (_render(what, spelling) if isinstance(what, tuple) else None) or self.what
        if self.file:
            text += f" ({self.file})"
        shown = _render(hint, spelling) if isinstance(hint, tuple) else self.hint
        if shown:
            text += f": {shown}"
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
        what: Text,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: Text | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        super().__init__(what, file=file, hint=hint)
        self.reasons = reasons or [self.what]


class NetworkError(MtlsError):
    """No connection to the peer, or the connection broke before an answer."""


class ConnectError(NetworkError):
    """The peer's address refused the connection or cannot be reached."""


class NameResolutionError(NetworkError):
    """The peer's host name does not resolve."""


class Timeout(NetworkError):
    """The peer did not do its part within the timeout."""


class ConnectTimeout(Timeout):
    """No connection, or no completed TLS handshake, within the timeout."""


class ReadTimeout(Timeout):
    """Connected, but no answer to the request within the timeout."""


class HandshakeError(MtlsError):
    """The TLS handshake with a peer failed, or TLS failed on the connection after it."""


class PeerVerificationError(HandshakeError, VerificationError):
    """We refused the peer's certificate: not trusted, not for this name, expired, ..."""


class CertificateRefusedError(HandshakeError):
    """The peer refused our certificate, or required one we did not send."""


class ProtocolError(MtlsError):
    """The peer closed without an answer, or answered with something that is not HTTP;
    also ``Response.json()`` when the body is not JSON."""


class HTTPStatusError(MtlsError):
    """The peer answered with a status of 400 or more; ``response`` is the whole answer."""

    def __init__(
        self,
        what: Text,
        *,
        response: ResponseLike,
        file: str | os.PathLike[str] | None = None,
        hint: Text | None = None,
    ) -> None:
        super().__init__(what, file=file, hint=hint)
        self.response = response


class ServerError(MtlsError):
    """The server could not start or serve."""


class StorageError(MtlsError):
    """The CA's database (SQLite or PostgreSQL) failed; ``unavailable`` when unreachable,
    which a service answers with 503 and recovers from once the database is back."""

    def __init__(
        self,
        what: Text,
        *,
        file: str | os.PathLike[str] | None = None,
        hint: Text | None = None,
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
