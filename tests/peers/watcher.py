"""The event listener (`aktin-broker-sftp watch`) in a process of its own, and what systemd's
aktin-broker-sftp.path does with its trigger, for the integration tests and the benchmark (the
booted Debian tests run the real units)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import stop

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Run:
    began: float
    ended: float
    code: int
    stderr: str


@dataclass
class PathUnit:
    """As systemd does with PathExists=: while the trigger exists and no run is going on, one
    run (`command`) is started, and its start (the service's ExecStartPre=) removes the trigger."""

    trigger: Path
    command: list[str]
    runs: list[Run] = field(default_factory=list)
    running: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(0.05):
            if not self.trigger.exists():
                continue
            began = time.monotonic()
            self.running = True
            self.trigger.unlink()
            done = subprocess.run(self.command, capture_output=True, text=True, cwd=ROOT, timeout=600)
            self.runs.append(Run(began, time.monotonic(), done.returncode, done.stderr))
            self.running = False

    def wait_for_runs(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while len(self.runs) < count:
            assert time.monotonic() < deadline, f"{len(self.runs)} runs after {seconds} s, not {count}"
            time.sleep(0.05)

    def settle(self, quiet: float, seconds: float) -> None:
        """Waits until no run is due or going on, and none was for `quiet` seconds."""
        deadline = time.monotonic() + seconds
        while self.running or self.trigger.exists() or (self.runs and time.monotonic() - self.runs[-1].ended < quiet):
            assert time.monotonic() < deadline, f"runs still going on after {seconds} s"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(600)


class Listener:
    """`aktin-broker-sftp watch` in a process of its own, its log lines collected."""

    def __init__(self, command: list[str], trigger: Path) -> None:
        self.process = subprocess.Popen(
            [*command, "watch", "--trigger", str(trigger)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, seconds: float, after: float = 0.0) -> float:
        """When a line matching `pattern` came (at `after` or later)."""
        deadline = time.monotonic() + seconds
        while True:
            for moment, line in list(self.lines):
                if moment >= after and re.search(pattern, line):
                    return moment
            assert time.monotonic() < deadline, f"no line like {pattern!r} within {seconds} s: {self.text()}"
            time.sleep(0.05)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self) -> int:
        stop(self.process, 10)  # type: ignore[arg-type]
        self.reader.join(10)
        return self.process.returncode
