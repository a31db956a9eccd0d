"""``mtlskit get`` without click or http.client, for the command lines it usually gets.

Most of ``mtlskit get``'s start-up was imports (click, http.client and the email
package under it), so :func:`mtlskit.cli.run` first asks :func:`plan` whether it
understands the whole command line: the URL, ``--certs --cacert --cert --key -X
-d -H --timeout --resolve``, each as ``-X VALUE`` or ``--request=VALUE``. Anything
else (``--help``, ``--json``, ``-o``, an unknown option, a value click would
refuse or that would make it guess) returns ``None`` and the click command in
:mod:`mtlskit.cli.client_cmds` runs instead, so the output is the same either way.

:func:`get` then connects through :func:`mtlskit.connect.open_connection` (the
same context, checks and explanations as :func:`mtlskit.client.request`), writes
the request as ``http.client`` would and reads a plain answer itself: a status
line, headers, a body by Content-Length, chunked, or until the server closes.
On anything unusual it hands every byte received to ``http.client``, so both
paths read any answer, and fail on it, the same way.

Also here, light and shared with the click command: :func:`request_parts` and
:func:`status_error`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys

from mtlskit.errors import ConfigError, MtlsError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    import ssl

    from _typeshed import WriteableBuffer

    from mtlskit.connect import Connection

__all__ = [
    "DEFAULT_CERTS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "Plan",
    "get",
    "plan",
    "request_parts",
    "status_error",
]

DEFAULT_URL = "https://localhost:8443"  # mtlskit.client.DEFAULT_URL, without importing it
DEFAULT_CERTS = "certs"
DEFAULT_TIMEOUT = 30.0

# ---------------------------------------------------------------- shared with click


def _read_data(data: str) -> bytes:
    """``-d TEXT``, ``-d @FILE`` or ``-d @-`` (stdin), as curl."""
    if not data.startswith("@"):
        return data.encode()
    name = data[1:]
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read request body: {exc.strerror}", file=name, hint="check the path after @"
        ) from exc


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise ConfigError(f"invalid header {text!r}", hint="use -H 'Name: value'")
    return name, value.strip()


def request_parts(
    method: str | None, data: str | None, headers: tuple[str, ...] | list[str]
) -> tuple[str, bytes | None, list[tuple[str, str]]]:
    """``-X``, ``-d`` and ``-H`` as curl reads them: the method, the body and the headers."""
    body = _read_data(data) if data is not None else None
    sent = [_parse_header(h) for h in headers]
    if body is not None and not any(k.lower() == "content-type" for k, _ in sent):
        sent.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl -d
    return method or ("POST" if body is not None else "GET"), body, sent


def status_error(status: int, reason: str, url: str) -> MtlsError | None:
    """A status of 400 or more fails after the body is printed, as curl --fail-with-body."""
    if status < 400:
        return None
    return MtlsError(
        f"the server answered {status} {reason}".rstrip(), file=url, hint="see the response body"
    )


# ---------------------------------------------------------------- the command line


class Plan:
    """What ``mtlskit get`` was asked to do, read without click."""

    __slots__ = (
        "cacert",
        "cert",
        "certs",
        "data",
        "headers",
        "key",
        "method",
        "resolve",
        "timeout",
        "url",
    )

    def __init__(self) -> None:
        self.url = DEFAULT_URL
        self.certs = DEFAULT_CERTS
        self.cacert: str | None = None
        self.cert: str | None = None
        self.key: str | None = None
        self.method: str | None = None
        self.data: str | None = None
        self.headers: list[str] = []
        self.timeout = DEFAULT_TIMEOUT
        self.resolve: str | None = None


# option -> Plan attribute; each takes one value.
_OPTIONS = {
    "--certs": "certs",
    "--cacert": "cacert",
    "--cert": "cert",
    "--key": "key",
    "-X": "method",
    "--request": "method",
    "-d": "data",
    "--data": "data",
    "-H": "headers",
    "--header": "headers",
    "--timeout": "timeout",
    "--resolve": "resolve",
}
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]*")  # an HTTP token (or empty: the default)


def _plain_path(value: str, folder: bool) -> bool:
    """True if click.Path takes ``value`` as is: already in pathlib's form (what click
    hands the command), and not a file where a folder is wanted, or the reverse."""
    parts = value.split("/")
    parts = parts[1:] if parts[0] == "" else parts  # an absolute path
    if not value or not all(p and p != "." for p in parts):
        return False
    try:
        st = os.stat(value)
    except OSError:
        return True  # click does not require it to exist; our own check says what is missing
    except ValueError:
        return False
    wrong = stat.S_ISREG(st.st_mode) if folder else stat.S_ISDIR(st.st_mode)
    return not wrong and os.access(value, os.R_OK)


def plan(args: list[str]) -> Plan | None:
    """``mtlskit get ARGS`` read by hand, or None when the click command must run it."""
    p = Plan()
    url: str | None = None
    values = iter(args)
    for arg in values:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _OPTIONS:
            if not eq:
                following = next(values, None)
                if following is None:
                    return None  # click says the option needs a value
                value = following
            attr = _OPTIONS[name]
            if attr == "headers":
                p.headers.append(value)
            elif attr == "timeout":
                try:
                    p.timeout = float(value)
                except ValueError:
                    return None
            else:
                setattr(p, attr, value)  # the last one wins, as in click
        elif arg.startswith("-") or url is not None:
            return None  # help, --json, -o, an unknown option, a second URL
        else:
            url = arg
    p.url = url if url is not None else p.url
    if not _supported(p):
        return None
    return p


def _supported(p: Plan) -> bool:
    """Values the fast path sends exactly as http.client would (else http.client
    would raise on them, or click would refuse them)."""
    if not p.url.isascii() or not _METHOD.fullmatch(p.method or ""):
        return False
    if p.timeout != p.timeout or p.timeout in (float("inf"), float("-inf")):
        return False
    if any(not all(" " <= c <= "~" or c == "\t" for c in h) for h in p.headers):
        return False
    if p.data is not None and not p.data.startswith("@"):
        try:
            p.data.encode()
        except UnicodeEncodeError:
            return False
    files = [(p.cacert, False), (p.cert, False), (p.key, False), (p.certs, True)]
    return all(_plain_path(path, folder) for path, folder in files if path is not None)


# ---------------------------------------------------------------- the request


def get(p: Plan) -> int:
    """Make the request, print the body and a newline; raises MtlsError on failure."""
    from mtlskit.connect import open_connection

    verb, body, headers = request_parts(p.method, p.data, p.headers)
    conn = open_connection(
        p.url,
        certs=p.certs,
        ca=p.cacert,
        cert=p.cert,
        key=p.key,
        timeout=p.timeout,
        resolve=p.resolve,
    )
    try:
        status, reason, answer = _exchange(conn, verb.upper(), body, headers)
    except Exception as exc:
        failure = conn.failed(exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        conn.tls.close()
    # The Go client's fmt.Println(string(body)): the body, then a newline.
    sys.stdout.buffer.write(answer + b"\n")
    sys.stdout.buffer.flush()
    failure = status_error(status, reason, conn.target.url)
    if failure is not None:
        raise failure
    return 0


def _request_head(
    conn: Connection, method: str, body: bytes | None, headers: list[tuple[str, str]]
) -> bytes:
    """The request line and headers, byte for byte what http.client sends for them."""
    from mtlskit.connect import request_headers

    sent = request_headers(headers)
    names = {k.lower() for k in sent}
    target = conn.target
    lines = [f"{method} {target.path} HTTP/1.1"]
    if "host" not in names:
        host = f"[{target.host}]" if ":" in target.host else target.host
        lines.append(f"Host: {host}" if target.port == 443 else f"Host: {host}:{target.port}")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity")
    if "content-length" not in names and "transfer-encoding" not in names:
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        elif method in ("PATCH", "POST", "PUT"):
            lines.append("Content-Length: 0")
    lines += [f"{k}: {v}" for k, v in sent.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _exchange(
    conn: Connection, method: str, body: bytes | None, headers: list[tuple[str, str]]
) -> tuple[int, str, bytes]:
    conn.tls.sendall(_request_head(conn, method, body, headers))
    if body:
        conn.tls.sendall(body)
    reader = _Reader(conn.tls)
    answer = _read_answer(reader, method)
    if answer is None:
        answer = _read_again(reader, method)
    return answer


# ---------------------------------------------------------------- the answer

_MAXLINE = 65536  # http.client's limits: longer lines, or more headers, go to it
_MAXHEADERS = 90
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # what the email parser takes as a name


class _Reader:
    """Reads the answer, keeping every byte in case http.client must read it again."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.pos = 0
        self.eof = False

    def _fill(self) -> bool:
        if not self.eof:
            chunk = self.sock.recv(65536)
            self.data += chunk
            self.eof = not chunk
        return not self.eof

    def line(self) -> bytes | None:
        """The next line with its newline (at the end: what is left); None if too long."""
        start = self.pos
        while (end := self.data.find(b"\n", start)) < 0:
            start = len(self.data)
            if start - self.pos > _MAXLINE or not self._fill():
                break
        end = len(self.data) - 1 if end < 0 else end
        if end + 1 - self.pos > _MAXLINE:
            return None
        line = bytes(self.data[self.pos : end + 1])
        self.pos = end + 1
        return line

    def exactly(self, size: int) -> bytes | None:
        while len(self.data) - self.pos < size:
            if not self._fill():
                return None
        out = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return out


def _read_answer(reader: _Reader, method: str) -> tuple[int, str, bytes] | None:
    """Status, reason and body of a plain answer, read as http.client reads it;
    None on anything else (1xx, odd lines, a short body ...)."""
    line = reader.line()
    if line is None or not line.endswith(b"\r\n"):
        return None
    words = str(line, "iso-8859-1").split(None, 2)
    if len(words) < 2 or words[0] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    code = words[1]
    if not (len(code) == 3 and code.isascii() and code.isdigit()) or code < "200":
        return None
    status, reason = int(code), words[2].strip() if len(words) == 3 else ""
    fields: dict[str, str] = {}
    for _ in range(_MAXHEADERS + 1):
        line = reader.line()
        if line is None or not line.endswith(b"\r\n"):
            return None
        if line == b"\r\n":
            break
        name, colon, value = str(line[:-2], "iso-8859-1").partition(":")
        if not colon or "\r" in value or not _FIELD_NAME.fullmatch(name):
            return None
        fields.setdefault(name.lower(), value.lstrip(" \t"))  # the first one counts
    else:
        return None
    encoding = fields.get("transfer-encoding")
    length: int | None = None
    if "content-length" in fields and not encoding:
        try:
            length = int(fields["content-length"])
        except ValueError:
            length = None
        length = length if length is not None and length >= 0 else None
    if status in (204, 304):
        length = 0
    if method == "HEAD":
        return status, reason, b""
    if encoding and encoding.lower() == "chunked":
        body = _read_chunked(reader)
    elif encoding:
        return None  # another transfer coding
    elif length is None:
        body = reader.rest()
    else:
        body = reader.exactly(length)
    return None if body is None else (status, reason, body)


def _read_chunked(reader: _Reader) -> bytes | None:
    parts = []
    while True:
        line = reader.line()
        if line is None or not line.endswith(b"\n"):
            return None
        size_text = line.split(b";", 1)[0]  # drop chunk extensions
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size < 0:
            return None
        if size == 0:
            break
        chunk = reader.exactly(size)
        if chunk is None or reader.exactly(2) is None:  # the CRLF after the chunk
            return None
        parts.append(chunk)
    while True:  # the trailer, up to its empty line or the end
        line = reader.line()
        if line is None:
            return None
        if not line or line in (b"\r\n", b"\n"):
            return b"".join(parts)


class _Replay(io.RawIOBase):
    """The bytes already read, then the rest of the socket."""

    def __init__(self, reader: _Reader) -> None:
        self._seen = memoryview(bytes(reader.data))
        self._sock = reader.sock
        self._eof = reader.eof

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._seen:
            n = min(memoryview(buffer).nbytes, len(self._seen))
            memoryview(buffer)[:n] = self._seen[:n]
            self._seen = self._seen[n:]
            return n
        return 0 if self._eof else self._sock.recv_into(buffer)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self)


def _read_again(reader: _Reader, method: str) -> tuple[int, str, bytes]:
    """Read the answer with http.client from its first byte: it has the last word on
    anything unusual (and its errors are explained as for mtlskit.client.request)."""
    import http.client

    resp = http.client.HTTPResponse(_Replay(reader), method=method)  # type: ignore[arg-type]
    try:
        resp.begin()
        return resp.status, resp.reason, resp.read()
    finally:
        # Now, not when collected at exit: Python 3.13 would flush its closed file then.
        resp.close()
