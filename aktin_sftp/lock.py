"""One run at a time: an advisory lock on a file in the state directory."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aktin_sftp.errors import LockedError


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another run holds {path}; this one exits and the next timer run continues") from None
        # The kernel drops the lock with the process, so a killed run never leaves it stuck.
        yield
    finally:
        os.close(descriptor)
