"""Crash and pause points for the crash-consistency and fault tests.

Only the tests set these variables; unset (as in production), a checkpoint does nothing.
- AKTIN_SFTP_CRASH_AT: the process kills itself with SIGKILL at the first checkpoint whose name
  starts with that value.
- AKTIN_SFTP_PAUSE_AT and AKTIN_SFTP_PAUSE_FILE: every thread that reaches a checkpoint whose
  name starts with that value creates the file (holding how many threads wait there) and waits
  until the test removes it (at most a minute), so that the test can break the network at
  exactly that step. Once released, no checkpoint pauses again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

_CRASH_AT = os.environ.get("AKTIN_SFTP_CRASH_AT")
_PAUSE_AT = os.environ.get("AKTIN_SFTP_PAUSE_AT")
_PAUSE_FILE = os.environ.get("AKTIN_SFTP_PAUSE_FILE")
_PAUSE_LONGEST = 60.0
_pausing = threading.Lock()
_waiting = 0
_released = threading.Event()


def checkpoint(name: str) -> None:
    if _CRASH_AT and name.startswith(_CRASH_AT):
        os.kill(os.getpid(), signal.SIGKILL)
    if _PAUSE_AT and _PAUSE_FILE and name.startswith(_PAUSE_AT) and not _released.is_set():
        _pause(Path(_PAUSE_FILE))


def _pause(marker: Path) -> None:
    global _waiting
    with _pausing:
        # A thread arriving after the test removed the file must not create it again.
        if _released.is_set() or (_waiting and not marker.exists()):
            return
        _waiting += 1
        marker.write_text(str(_waiting))
    deadline = time.monotonic() + _PAUSE_LONGEST
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    _released.set()
