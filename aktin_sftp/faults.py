"""Crash points for the crash-consistency tests.

Only the tests set AKTIN_SFTP_CRASH_AT; then the process kills itself with SIGKILL at the first
checkpoint whose name starts with that value. Unset (as in production), a checkpoint does nothing.
"""

from __future__ import annotations

import os
import signal

_CRASH_AT = os.environ.get("AKTIN_SFTP_CRASH_AT")


def checkpoint(name: str) -> None:
    if _CRASH_AT and name.startswith(_CRASH_AT):
        os.kill(os.getpid(), signal.SIGKILL)
