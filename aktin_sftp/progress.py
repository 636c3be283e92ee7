"""A progress line for long uploads, shown only to a person at a terminal (never in the journal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

INTERVAL = 0.5


class ProgressLine:
    def __init__(self, name: str, stream: TextIO) -> None:
        self.name = name
        self.stream = stream
        self.start = time.monotonic()
        self.shown = 0.0

    def __call__(self, sent: int, total: int) -> None:
        now = time.monotonic()
        done = sent >= total
        if now - self.shown < INTERVAL and not done:
            return
        self.shown = now
        rate = sent / max(now - self.start, 1e-6)
        self.stream.write(f"\r{self.name}: {sent / 2**20:.1f} of {total / 2**20:.1f} MiB, {rate / 1e6:.0f} MB/s\x1b[K")
        if done:
            self.stream.write("\n")
        self.stream.flush()


def for_terminal(name: str, stream: TextIO = sys.stderr) -> ProgressLine | None:
    return ProgressLine(name, stream) if stream.isatty() else None
