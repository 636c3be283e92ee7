"""One run at a time: an advisory lock on a file in the state directory (or on a folder)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aktin_sftp.errors import LockedError


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    with held(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), f"another run holds {path}"):
        yield


@contextmanager
def held(descriptor: int, holder: str) -> Iterator[None]:
    """An exclusive lock on `descriptor`, which is closed at the end; LockedError saying
    `holder` when another process has it."""
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{holder}; this one exits and the next timer run continues") from None
        # The kernel drops the lock with the process, so a killed run never leaves it stuck.
        yield
    finally:
        os.close(descriptor)
