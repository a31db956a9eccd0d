"""Files on disk: atomic writes with safe modes, and the seed's file layout.

Keys are written 0600 and certificates 0644 through a temporary file in the
same folder, fsync and ``os.replace`` (as mkcert's ``cert.go`` does), so a
reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mtlskit.errors import AlreadyExistsError, PKIError

KEY_MODE = 0o600
CERT_MODE = 0o644

__all__ = ["CERT_MODE", "KEY_MODE", "SeedLayout", "read_file", "write_atomic", "write_many"]


@dataclass(frozen=True)
class SeedLayout:
    """The seed's names in a folder: ``ca.crt``, ``server.key``, ``client.crt`` …"""

    dir: Path

    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def csr(self, name: str) -> Path:
        return self.dir / f"{name}.csr"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"


SEED_FILES = frozenset(("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"))


def missing_hint(path: str | os.PathLike[str]) -> str:
    """The next step for a missing file: the seed's files come from ``mtlskit init``."""
    return "run mtlskit init" if Path(path).name in SEED_FILES else "check the path"


def read_file(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """Read a whole file, turning OS errors into one-line :class:`PKIError`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} not found", file=path, hint=missing_hint(path)) from None
    except IsADirectoryError:
        raise PKIError(f"{what} is a folder, not a file", file=path, hint="name a file") from None
    except PermissionError:
        raise PKIError(f"{what} is not readable", file=path, hint="check its permissions") from None
    except OSError as exc:
        raise PKIError(f"cannot read {what}: {exc.strerror}", file=path) from exc


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PKIError(
            f"cannot create folder: {exc.strerror}", file=folder, hint="choose another folder"
        ) from exc


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_many(
    files: Iterable[tuple[str | os.PathLike[str], bytes, int]], *, force: bool = False
) -> list[Path]:
    """Write several files all-or-nothing as far as the filesystem allows.

    Every target is checked first (nothing is written if one exists and
    ``force`` is false), every temporary file is written and synced, and only
    then are they renamed into place.
    """
    items = [(Path(p), data, mode) for p, data, mode in files]
    if not force:
        for path, _, _ in items:
            if path.exists():
                raise AlreadyExistsError(
                    "file exists", file=path, hint="pass --force to overwrite it"
                )
    for folder in {path.parent for path, _, _ in items}:
        _mkdir(folder)
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in items:
            temps.append((_write_temp(path, data, mode), path))
    except OSError as exc:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise PKIError(
            f"cannot write: {exc.strerror}", file=exc.filename, hint="check the folder"
        ) from exc
    for tmp, path in temps:
        os.replace(tmp, path)
    if temps:
        dir_fd = os.open(temps[0][1].parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return [path for _, path in temps]


def write_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int = CERT_MODE, *, force: bool = True
) -> Path:
    """Write one file atomically with ``mode`` (0600 for keys, 0644 otherwise)."""
    return write_many([(path, data, mode)], force=force)[0]
