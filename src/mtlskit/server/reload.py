"""Hot reload: watch the server's files (and SIGHUP), check them, swap the TLS state.

::

    holder = ContextHolder(cert, key, ca, crl=crl, build=checked_build)
    watcher = FileWatcher(holder)           # polls every second
    task = asyncio.create_task(watcher.run())
    # and `kill -HUP <pid>` reloads at once (Server.serve installs it)

Polling is deliberate: four ``stat`` calls a second cost nothing, work on every
filesystem and every way a file gets replaced (``os.replace`` gives a new inode,
an editor or ``cp`` a new mtime/size, a Kubernetes secret a new symlink target),
where inotify needs a C dependency and misses renames of parent symlinks.

A change is reloaded once the files have stopped changing for :data:`SETTLE`
seconds, so a rotation that replaces the certificate and then the key is seen
as one change, not as a "key does not match" in between. The new state is built
completely before it is swapped in (:meth:`ContextHolder.reload`); a broken
replacement is refused with one log line and the old state keeps serving.

:func:`checked_build` also refuses what OpenSSL would load without complaint but
then fail every handshake with: an expired or not yet valid server certificate, one
whose extendedKeyUsage excludes serverAuth, a CA bundle that holds no CA or whose
certificates have all expired, a CRL signed by another key than the CA's, or a CRL
past its nextUpdate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlskit.errors import MtlsError, PKIError
from mtlskit.pki.crl import check_crl, read_crl
from mtlskit.pki.load import read_certificates
from mtlskit.pki.verify import can_anchor_trust, eku_names
from mtlskit.server.tlsstate import ContextHolder, TLSState, build_state

__all__ = [
    "INTERVAL",
    "SETTLE",
    "FileWatcher",
    "LoadedFacts",
    "check_files",
    "check_roles",
    "checked_build",
    "facts_of",
    "watch_files",
]

log = logging.getLogger("mtlskit.server")

INTERVAL = 1.0  # seconds between two looks at the files
SETTLE = 0.2  # a change must be this old (no newer change) before it is loaded

PathLike = str | os.PathLike[str]
Fingerprint = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class LoadedFacts:
    """What a :class:`TLSState` was built from, for the expiry metrics."""

    server_cert: x509.Certificate
    ca_certs: tuple[x509.Certificate, ...]
    crl: x509.CertificateRevocationList | None


# The facts of each live state, dropped with the state (TLSState is frozen, not ours).
_FACTS: weakref.WeakKeyDictionary[TLSState, LoadedFacts] = weakref.WeakKeyDictionary()


def check_files(
    cert: PathLike,
    key: PathLike,
    ca: PathLike,
    crl: PathLike | None,
    *,
    now: dt.datetime | None = None,
) -> LoadedFacts:
    """Refuse files that would load but make every handshake fail; return what they hold.

    Garbage and a key that does not match its certificate are refused by
    :func:`mtlskit.tls.server_context` itself.
    """
    now = now or dt.datetime.now(dt.UTC)
    leaf = read_certificates(cert)[0]
    if leaf.not_valid_after_utc < now:
        raise PKIError(
            f"server certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            file=cert,
            hint="renew it: mtlskit renew",
        )
    if leaf.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise PKIError(
            f"server certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            file=cert,
            hint="check the clocks of this machine and the CA's",
        )
    cas = tuple(read_certificates(ca, "CA certificate"))
    if all(c.not_valid_after_utc < now for c in cas):
        raise PKIError(
            "every CA certificate in the bundle has expired: no client could connect",
            file=ca,
            hint="put the current CA certificate in it",
        )
    revocations = None
    if crl is not None:
        revocations = read_crl(crl)
        check_crl(revocations, cas, file=crl, now=now)
    return LoadedFacts(leaf, cas, revocations)


def check_roles(facts: LoadedFacts, cert: PathLike, ca: PathLike) -> None:
    """Refuse a server certificate whose extendedKeyUsage excludes TLS servers (clients
    would refuse every handshake; one without the extension may serve, as in OpenSSL)
    and a CA file that holds no CA (the server would refuse every client)."""
    if not any(can_anchor_trust(c) for c in facts.ca_certs):
        names = "; ".join(c.subject.rfc4514_string() for c in facts.ca_certs)
        raise PKIError(
            f"the CA file holds no CA certificate ({names}: no basicConstraints CA:TRUE): "
            "no client could connect",
            file=ca,
            hint="pass the CA that issues the client certificates (its ca.crt) with --ca",
        )
    try:
        usages = facts.server_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return
    raise PKIError(
        f"not a server certificate: its extendedKeyUsage has no serverAuth ({eku_names(list(usages))}), so "
        "clients refuse it",
        file=cert,
        hint="issue a server certificate: mtlskit issue server NAME (or --profile server-client)",
    )


def checked_build(
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
    """:func:`~mtlskit.server.tlsstate.build_state` after :func:`check_files`."""
    facts = check_files(cert, key, ca, crl)
    check_roles(facts, cert, ca)
    state = build_state(
        cert,
        key,
        ca,
        crl=crl,
        stateful_tickets=stateful_tickets,
        require_client_cert=require_client_cert,
        any_client_purpose=any_client_purpose,
        client_ca_names=client_ca_names,
    )
    _FACTS[state] = facts
    return state


def facts_of(state: TLSState) -> LoadedFacts:
    """What ``state`` was built from (read from its files if it was not built here)."""
    facts = _FACTS.get(state)
    if facts is None:
        facts = check_files(state.cert, state.key, state.ca, state.crl)
        _FACTS[state] = facts
    return facts


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a re-pointed link is a change too
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Reload ``holder`` when its certificate, key, CA bundle or CRL change.

    With ``rotate_every`` it also rebuilds the state that often: each new context
    starts an empty session cache (the default engine's stateful TLS 1.3 tickets)
    and fresh random ticket keys (the stdlib engine; the ssl module offers no other
    way to set them). A ticket then resumes until the next rotation; after it the
    client makes one full handshake and gets a new one.
    """

    def __init__(
        self,
        holder: ContextHolder,
        *,
        interval: float = INTERVAL,
        settle: float = SETTLE,
        rotate_every: float = 0.0,
        watch: bool = True,
    ) -> None:
        self.holder = holder
        self.interval = interval
        self.settle = settle
        self.rotate_every = rotate_every
        self.watch = watch
        self._rotation_tried = 0.0
        self._seen = self.fingerprint()
        self._changed_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def paths(self) -> list[Path]:
        h = self.holder
        return [h.cert, h.key, h.ca, *([h.crl] if h.crl is not None else [])]

    def fingerprint(self) -> Fingerprint:
        return tuple(_stat(p) for p in self.paths)

    def due(self, now: float | None = None) -> bool:
        """True when the files changed and have been quiet for :attr:`settle` seconds."""
        now = time.monotonic() if now is None else now
        current = self.fingerprint()
        if current != self._seen:
            self._seen = current
            self._changed_at = now
            return False
        if self._changed_at is not None and now - self._changed_at >= self.settle:
            self._changed_at = None
            return True
        return False

    def rotation_due(self, now: float | None = None) -> bool:
        """True when the current state (and its ticket keys) is older than rotate_every."""
        if self.rotate_every <= 0:
            return False
        now = time.time() if now is None else now
        # A failed rotation (broken files) is retried after another period, not every poll.
        since = max(self.holder.current.loaded_at, self._rotation_tried)
        if now - since < self.rotate_every:
            return False
        self._rotation_tried = now
        return True

    async def reload(self, why: str) -> bool:
        """Reload off the event loop (building a context reads files and parses keys)."""
        async with self._lock:
            log.debug("reloading: %s", why)
            loop = asyncio.get_running_loop()
            # The holder logs the outcome as one line, and keeps the old state on failure.
            return await loop.run_in_executor(None, self.holder.try_reload)

    async def run(self) -> None:
        """Poll until cancelled; a pending change is looked at again after :attr:`settle`."""
        while True:
            await asyncio.sleep(self.settle if self._changed_at is not None else self.interval)
            try:
                if self.watch and self.due():
                    await self.reload("files changed")
                elif self.rotation_due():
                    await self.reload("session ticket key rotation")
            except MtlsError:
                pass  # already logged by the holder as one line
            except Exception:  # never let the watcher die: the server must keep serving
                log.exception("file watcher error")


@contextlib.asynccontextmanager
async def watch_files(
    holder: ContextHolder, interval: float, *, rotate_every: float = 0.0
) -> AsyncIterator[FileWatcher | None]:
    """Watch ``holder``'s files while the block runs (``interval`` 0: no watching), and
    rotate its session ticket keys every ``rotate_every`` seconds (0: never).

    SIGHUP reloads at once (installed by :meth:`mtlskit.server.lifecycle.Server.serve`).
    """
    if interval <= 0 and rotate_every <= 0:
        yield None
        return
    poll = interval if interval > 0 else min(rotate_every, INTERVAL)
    watcher = FileWatcher(
        holder,
        interval=poll,
        settle=min(SETTLE, poll),
        rotate_every=rotate_every,
        watch=interval > 0,
    )
    task = asyncio.get_running_loop().create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
