"""The renewal agent: keeps a certificate fresh against a CA service (``mtlskit agent``).

::

    agent = Agent(AgentConfig(ca_url="https://ca:9443", cert=Path("certs/server.crt"),
                              key=Path("certs/server.key")))
    agent.run_once()      # RENEWED, NOT_DUE (or raises)
    agent.run()           # until stop(): renew at 2/3 of each lifetime, with jitter

Each renewal makes a NEW key (same type as the current one), sends a CSR for it
to ``POST /renew`` over mTLS with the current certificate, checks what comes
back (chains to ``ca.crt``, matches the new key, same subject and SANs) and only
then replaces key and certificate atomically (temporary files, fsync, rename):
a working pair is never replaced by a broken one. Then it runs the hook
(``--exec CMD`` or ``--signal PID``, SIGHUP); ``mtlskit serve`` also reloads
changed files by itself. When the CA cannot be reached it retries with
exponential backoff (and jitter). Every step is one log line.

Due time: 2/3 into the lifetime (as :func:`mtlskit.pki.renew.due_at`), moved
earlier by a random part of up to 1/20 of the lifetime so that many agents with
certificates from one moment do not all call at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import signal
import subprocess
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509

from mtlskit.errors import (
    ConfigError,
    HandshakeError,
    MtlsError,
    NetworkError,
    PKIError,
    ProtocolError,
    RefusedError,
)

__all__ = ["Agent", "AgentConfig", "Outcome"]

log = logging.getLogger("mtlskit.agent")

JITTER_FRACTION = 1 / 20


class Outcome(Enum):
    RENEWED = "renewed"
    NOT_DUE = "not due"


@dataclass(frozen=True)
class AgentConfig:
    ca_url: str
    cert: Path
    key: Path
    ca: Path | None = None  # default: ca.crt beside the certificate
    exec_cmd: str | None = None
    signal_pid: int | None = None
    backoff: float = 5.0  # first retry after this many seconds, doubling
    max_backoff: float = 300.0
    retries: int | None = None  # None: forever (daemon); --once: a few
    force: bool = False  # renew now even when not due

    def __post_init__(self) -> None:
        if self.exec_cmd is not None and self.signal_pid is not None:
            raise ConfigError("give either --exec or --signal, not both")
        if self.signal_pid is not None and self.signal_pid <= 0:
            raise ConfigError(f"--signal {self.signal_pid} is not a process id")
        if self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ConfigError("--backoff must be more than 0 and at most --max-backoff")
        if self.retries is not None and self.retries < 0:
            raise ConfigError("--retries must be 0 or more")

    @property
    def ca_path(self) -> Path:
        return self.ca or self.cert.parent / "ca.crt"


class Agent:
    """See the module docstring."""

    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.SystemRandom()
        self._stop = threading.Event()
        self._jitter: dict[int, float] = {}  # per serial, so a due time does not move

    def stop(self) -> None:
        self._stop.set()

    # -- reading -----------------------------------------------------------------------

    def current(self) -> x509.Certificate:
        from mtlskit.pki.load import read_certificates

        return read_certificates(self.config.cert)[0]

    def due_at(self, cert: x509.Certificate) -> dt.datetime:
        """2/3 into the lifetime, earlier by this certificate's jitter."""
        from mtlskit.pki.renew import due_at

        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        if cert.serial_number not in self._jitter:
            self._jitter[cert.serial_number] = self._rng.uniform(0, JITTER_FRACTION)
        return due_at(cert) - life * self._jitter[cert.serial_number]

    # -- one renewal -------------------------------------------------------------------

    def renew(self) -> x509.Certificate:
        """Renew now: new key, CSR, POST /renew, check, replace atomically, hook."""
        from cryptography.hazmat.primitives.serialization import Encoding

        from mtlskit.caclient import renew_csr
        from mtlskit.pki.ca import create_csr
        from mtlskit.pki.keys import generate_key, load_private_key, private_key_pem
        from mtlskit.pki.load import load_certificates, read_certificates
        from mtlskit.pki.renew import key_type_of
        from mtlskit.pki.store import CERT_MODE, KEY_MODE, read_file, write_many
        from mtlskit.pki.verify import verify_certificate
        from mtlskit.tls import client_context

        cfg = self.config
        old = self.current()
        old_key = load_private_key(read_file(cfg.key, "private key"), file=cfg.key)
        key = generate_key(key_type_of(old_key))
        log.info(
            "renewing %s (serial %x) with a new %s key",
            _who(old),
            old.serial_number,
            key_type_of(key),
        )
        csr = create_csr(key, x509.Name([]), [])  # the CA keeps the identity
        context = client_context(cfg.ca_path, cfg.cert, cfg.key)
        issued = renew_csr(cfg.ca_url, csr.public_bytes(Encoding.PEM), context)
        chain = load_certificates(issued.chain_pem, file="the CA service's answer")
        new = chain[0]
        # Never replace a working pair with a broken one.
        result = verify_certificate(
            new,
            read_certificates(cfg.ca_path),
            intermediates=chain[1:],
            key=key,
            names={"cert": "the renewed certificate", "ca": str(cfg.ca_path)},
        )
        result.raise_for_problems()
        if new.subject != old.subject or _sans(new) != _sans(old):
            raise PKIError(
                "the CA service returned a certificate for another identity "
                f"({new.subject.rfc4514_string()}), kept the current one",
                file=cfg.cert,
            )
        write_many(
            [(cfg.key, private_key_pem(key), KEY_MODE), (cfg.cert, issued.chain_pem, CERT_MODE)],
            force=True,
        )
        log.info(
            "renewed %s: serial %s, valid until %s; wrote %s and %s",
            _who(new),
            issued.serial,
            f"{new.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            cfg.key,
            cfg.cert,
        )
        self._hook()
        return new

    def _hook(self) -> None:
        cfg = self.config
        if cfg.signal_pid is not None:
            try:
                os.kill(cfg.signal_pid, signal.SIGHUP)
            except OSError as exc:
                raise ConfigError(
                    f"cannot signal process {cfg.signal_pid}: {exc.strerror}",
                    hint="check --signal PID",
                ) from None
            log.info("sent SIGHUP to process %d", cfg.signal_pid)
        elif cfg.exec_cmd is not None:
            log.info("running: %s", cfg.exec_cmd)
            done = subprocess.run(cfg.exec_cmd, shell=True, check=False)
            if done.returncode != 0:
                raise ConfigError(
                    f"--exec command exited with {done.returncode}", hint="check the command"
                )

    def _renew_with_retries(self) -> x509.Certificate:
        """:meth:`renew`, retried with exponential backoff while the CA is unreachable
        (or answers 503/429); a refusal for any other reason is final."""
        cfg = self.config
        delay = cfg.backoff
        attempt = 0
        while True:
            try:
                return self.renew()
            except (NetworkError, HandshakeError, ProtocolError, RefusedError) as exc:
                # The CA down, unreachable, mid-restart or busy: worth another try. A
                # refusal for any other reason (403: revoked, other names …) is final.
                retryable = not isinstance(exc, RefusedError) or exc.status in (429, 503)
                attempt += 1
                if not retryable or (cfg.retries is not None and attempt > cfg.retries):
                    raise
                wait = delay
                if isinstance(exc, RefusedError) and exc.retry_after:
                    wait = max(wait, float(exc.retry_after))
                wait *= 1 + self._rng.uniform(0, 0.1)
                log.warning("%s; retrying in %.1fs", exc.one_line(), wait)
                if self._stop.wait(wait):
                    raise
                delay = min(delay * 2, cfg.max_backoff)

    # -- modes -------------------------------------------------------------------------

    def run_once(self, now: dt.datetime | None = None) -> Outcome:
        """Renew when due (or forced): RENEWED or NOT_DUE; errors raise."""
        cert = self.current()
        due = self.due_at(cert)
        now = now or dt.datetime.now(dt.UTC)
        if not self.config.force and now < due:
            log.info("%s is not due: renewal at %s", _who(cert), f"{due:%Y-%m-%d %H:%M:%S} UTC")
            return Outcome.NOT_DUE
        self._check_not_expired(cert, now)
        self._renew_with_retries()
        return Outcome.RENEWED

    def run(self) -> None:
        """Renew at each due time until :meth:`stop` (SIGINT/SIGTERM in the CLI)."""
        force = self.config.force
        while not self._stop.is_set():
            cert = self.current()
            now = dt.datetime.now(dt.UTC)
            due = self.due_at(cert)
            if now < due and not force:
                wait = (due - now).total_seconds()
                log.info(
                    "%s (serial %x) renews at %s (in %.0fs)",
                    _who(cert),
                    cert.serial_number,
                    f"{due:%Y-%m-%d %H:%M:%S} UTC",
                    wait,
                )
                # Look again at least hourly: someone may replace the files meanwhile.
                self._stop.wait(min(wait, 3600.0))
                continue
            force = False
            self._check_not_expired(cert, now)
            try:
                self._renew_with_retries()
            except MtlsError as exc:
                if self._stop.is_set():
                    return
                log.error("renewal failed: %s", exc.one_line())
                self._stop.wait(self.config.max_backoff)

    def _check_not_expired(self, cert: x509.Certificate, now: dt.datetime) -> None:
        if now >= cert.not_valid_after_utc:
            raise PKIError(
                f"{_who(cert)} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC: "
                "it cannot prove who it is any more",
                file=self.config.cert,
                hint="enroll again with a new token (mtlskit ca token, mtlskit enroll)",
            )


def _who(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "the certificate"


def _sans(cert: x509.Certificate) -> list[str]:
    from mtlskit.pki.names import san_strings

    return sorted(san_strings(cert))
