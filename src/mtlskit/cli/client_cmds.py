"""Client commands: ``mtlskit get`` (the seed's Go client, grown up) and ``mtlskit demo``.

``get`` is a thin layer over :func:`mtlskit.client.request`: it reads curl's ``-X``,
``-d`` and ``-H``, prints the body, and fails on a status of 400 or more. What only
``-o``, ``--json`` or ``demo`` need (json, the PKI store, subprocess, threading, ...)
is imported inside the functions that use it, so that a plain ``mtlskit get``
starts without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mtlskit.cli.common import client_tls_options
from mtlskit.client import DEFAULT_TIMEOUT, DEFAULT_URL, request
from mtlskit.errors import ConfigError, ServerError

if TYPE_CHECKING:
    import subprocess
    import threading

__all__ = ["demo", "get"]


@click.command(
    help="""Make an HTTPS request with a client certificate and print the body.

With no arguments it is the seed's Go client: GET https://localhost:8443, trust
certs/ca.crt, present certs/client.crt + certs/client.key, print the body and a
newline. A status of 400 or more still prints the body, then fails (exit 1), as
curl --fail-with-body.""",
)
@click.argument("url", default=DEFAULT_URL, required=False)
# Each option's name is the keyword argument of mtlskit.client.request() it sets, so
# an error naming that setting (mtlskit.errors.Setting) is spelled with the option.
# The CA is --cacert, as curl's; without --key, the key is found as find_client_files says.
@client_tls_options(
    ca_flag="--cacert",
    key_default="next to --cert as NAME.key, or in its PEM; else certs/client.key",
)
@click.option("-X", "--request", "method", metavar="METHOD", help="GET, or POST with -d.")
@click.option("-d", "--data", metavar="DATA", help="Request body; @FILE reads a file, @- stdin.")
@click.option(
    "-H", "--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="Repeatable."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the body to FILE instead of printing it.",
)
@click.option(
    "--create-dirs",
    is_flag=True,
    help="Create the folders of -o FILE that are missing (as curl); else they must exist.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print status, headers, body, TLS version, cipher and the server's certificate as JSON.",
)
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long to connect and for each read.",
)
@click.option(
    "--resolve",
    metavar="HOST:PORT:ADDRESS",
    help="Connect to ADDRESS for HOST:PORT, still checking the certificate for HOST (as curl).",
)
def get(
    url: str,
    certs: Path,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    method: str | None,
    data: str | None,
    headers: tuple[str, ...],
    output: Path | None,
    create_dirs: bool,
    as_json: bool,
    timeout: float,
    resolve: str | None,
) -> None:
    verb, body, sent = _request_parts(method, data, headers)
    if output is not None and not create_dirs and not output.parent.is_dir():
        # Checked before the request, which is then not sent in vain (curl fails after it).
        raise ConfigError(
            f"cannot write the body: folder {output.parent} does not exist",
            file=output,
            hint="create it, or pass --create-dirs (as curl)",
        )
    resp = request(
        verb,
        url,
        certs=certs,
        ca=ca,
        cert=cert,
        key=key,
        headers=sent,
        data=body,
        timeout=timeout,
        resolve=resolve,
    )
    if output is not None:
        from mtlskit.pki.store import write_atomic

        write_atomic(output, resp.body, 0o644)
    if as_json:
        import json

        shown = resp.as_dict()
        if output is not None:
            shown["body"] = None
            shown["body_file"] = str(output)
        click.echo(json.dumps(shown, indent=2))
    elif output is not None:
        click.echo(f"wrote {output} ({len(resp.body)} bytes, HTTP {resp.status})", err=True)
    else:
        # The Go client's fmt.Println(string(body)): the body, then a newline.
        sys.stdout.buffer.write(resp.body + b"\n")
        sys.stdout.buffer.flush()
    # As curl --fail-with-body: the body is out, then a status of 400 or more fails.
    resp.raise_for_status()


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


def _request_parts(
    method: str | None, data: str | None, headers: tuple[str, ...]
) -> tuple[str, bytes | None, list[tuple[str, str]]]:
    """``-X``, ``-d`` and ``-H`` as curl reads them: the method, the body and the headers."""
    body = _read_data(data) if data is not None else None
    sent = [_parse_header(h) for h in headers]
    if body is not None and not any(k.lower() == "content-type" for k, _ in sent):
        sent.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl -d
    return method or ("POST" if body is not None else "GET"), body, sent


# ---------------------------------------------------------------- demo


def _server_command(folder: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtlskit",
        "serve",
        "--certs",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerLog:
    """Reads a server's merged stdout/stderr: waits for its ready line, then keeps draining."""

    READY = "listen on https://"

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.lines: list[str] = []
        self._rest = b""
        self._thread: threading.Thread | None = None

    def _feed(self, chunk: bytes) -> bool:
        *complete, self._rest = (self._rest + chunk).split(b"\n")
        ready = False
        for line in complete:
            text = line.decode("utf-8", "replace").rstrip("\r")
            self.lines.append(text)
            ready = ready or self.READY in text
        return ready

    def wait_ready(self, timeout: float) -> None:
        """Poll the log (no sleeping) until the server says it listens, exits, or time is up."""
        import selectors
        import time

        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(
                        f"the server did not say it listens within {timeout:g} s",
                        hint="run the serve command above by hand to see why",
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    code = self.proc.wait()
                    last = next((ln.strip() for ln in reversed(self.lines) if ln.strip()), "")
                    # The server's own one-line error already says the next step.
                    raise ServerError(
                        f"the server exited with {code} before listening"
                        + (f": {last.removeprefix('error: ')}" if last else ""),
                        hint=None if last else "run the serve command above by hand to see why",
                    )
                if self._feed(chunk):
                    return

    def drain(self) -> None:
        """Keep reading in the background so the server never blocks on a full pipe."""
        import threading

        def run() -> None:
            while chunk := os.read(self.fd, 65536):
                self._feed(chunk)
            if self._rest:
                self._feed(b"\n")

        thread = threading.Thread(target=run, name="mtlskit-demo-log", daemon=True)
        thread.start()
        self._thread = thread

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ServerError(
                "the server did not stop within 15 s of SIGTERM (killed it)",
                hint="report this: graceful shutdown should finish in-flight requests and exit",
            ) from None
    return proc.returncode


@click.command(
    help="""The seed's whole flow: make the PKI, start `mtlskit serve`, call it with the
client, print hello world, stop the server.

Without --dir the PKI goes to a new temporary folder, removed at the end (./certs
is never touched). With --dir the folder is kept: certificates already there are
reused, otherwise `mtlskit init` writes them.""",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the PKI in this folder (default: a temporary folder).",
)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the server to start and answer.",
)
def demo(folder: Path | None, timeout: float) -> None:
    import shlex
    import shutil
    import subprocess
    import tempfile

    temp: Path | None = None
    if folder is None:
        temp = Path(tempfile.mkdtemp(prefix="mtlskit-demo-"))
        folder = temp / "certs"
    try:
        _demo_pki(folder, reuse=temp is None)
        port = _free_port()
        cmd = _server_command(folder, port)
        shown = f"mtlskit serve --certs {shlex.quote(str(folder))} --host 127.0.0.1 --port {port}"
        click.echo(f"2/4 server: {shown}")
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        log = _ServerLog(proc)
        try:
            log.wait_ready(timeout)
            log.drain()
            click.echo(f"    listening (pid {proc.pid})")
            url = f"https://localhost:{port}"
            click.echo(f"3/4 client: mtlskit get {url} --certs {shlex.quote(str(folder))}")
            resp = request("GET", url, certs=folder, timeout=timeout)
            peer = resp.peer
            if peer is not None:
                click.echo(
                    f"    {resp.tls_version}, server {peer.subject!r} verified against "
                    f"{peer.issuer!r}; HTTP {resp.status}"
                )
            click.echo(resp.text.rstrip("\n"))
            resp.raise_for_status()
        finally:
            code = _stop(proc)
            log.join()
        click.echo(f"4/4 stopped the server (SIGTERM, exit {code})")
        for line in log.lines:
            if line.strip():
                click.echo(f"    server: {line}")
        if code != 0:
            raise ServerError(f"the server exited with {code} after SIGTERM", hint="see its log")
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _demo_pki(folder: Path, *, reuse: bool) -> None:
    seed = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    if reuse and all((folder / name).is_file() for name in seed):
        click.echo(f"1/4 PKI: using {folder} (ca.crt, server.crt, client.crt already there)")
        return
    import shlex

    from mtlskit.pki.seed import init_seed

    init_seed(folder)
    click.echo(f"1/4 PKI: mtlskit init --dir {shlex.quote(str(folder))}")
    click.echo("    wrote ca.key ca.crt server.key server.crt client.key client.crt (+ CSRs)")
