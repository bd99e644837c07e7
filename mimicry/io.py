"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer of the project that replaces a file (registry metadata, phantom CSVs, checkpoints, tensor caches,
audit reports, the local stack's state) goes through here: the bytes go to a temporary file in the target's
directory, are flushed and fsynced, the temporary file is renamed over the target (:func:`os.replace`, atomic
on POSIX within one file system) and the directory is fsynced so the rename survives a crash. On any error
the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_writer", "fsync_dir"]


def fsync_dir(path: Path | str) -> None:
    """fsync a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temporary(path: Path, suffix: str) -> Path:
    """Create an empty, new file next to ``path`` with the permissions a plain ``open(path, "w")`` would give
    (``0o666`` less the umask), unlike :func:`tempfile.mkstemp`'s ``0o600``."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return tmp


@contextlib.contextmanager
def atomic_path(path: Path | str, *, mode: int | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (e.g. safetensors'
    ``save_file``); when the block ends without an error the file is fsynced, given ``mode`` (permission
    bits; default: as a new file from ``open``) and renamed over ``path``. The parent directory is created if
    missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(
    path: Path | str,
    *,
    text: bool = False,
    mode: int | None = None,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Yield an open file (binary, or text with ``text=True``) whose content replaces ``path`` atomically
    when the block ends without an error (for writers that stream: ``np.savez(fh, ...)``, CSV chunks)."""
    with atomic_path(path, mode=mode) as tmp:
        if text:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh
        else:
            with open(tmp, "wb") as fh:
                yield fh


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (``mode``: permission bits of the new file)."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


def atomic_write_text(
    path: Path | str, text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> None:
    """Replace ``path`` with ``text`` atomically (``mode``: permission bits of the new file)."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)
