"""Local files that hold medical data or state: private to this user, replaced atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from aktin_sftp.faults import checkpoint


def open_private(path: Path) -> BinaryIO:
    """Opens `path` for writing; a new file gets mode 0600 (the umask can only narrow it)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


class Hashing:
    """Writes through to `target` and keeps the SHA-256 of what went there."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.target.write(data)


def write_atomic(path: Path, data: bytes, previous: Path | None = None) -> None:
    """Replaces `path` so that a crash leaves either the old or the new content, never a mix;
    with `previous`, the old content is kept there."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open_private(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        checkpoint("state-write")
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
