"""A command of the product held at one of its checkpoints (aktin_sftp/faults.py), so that a test
can act at exactly that step: break the network, or start a second command."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent



class Paused:
    """Starts `command` and waits until a thread of it reaches a checkpoint named `step...`."""

    def __init__(self, command: list[str], step: str, directory: Path) -> None:
        self.marker = directory / f"paused-at-{step.replace(':', '-')}"
        self.marker.unlink(missing_ok=True)
        env = {**os.environ, "AKTIN_SFTP_PAUSE_AT": step, "AKTIN_SFTP_PAUSE_FILE": str(self.marker)}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 60
        while not self.marker.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                out, err = self.process.communicate()
                raise AssertionError(f"never reached checkpoint {step!r} (exit {self.process.returncode}): {out}{err}")
            time.sleep(0.02)

    def wait_for(self, threads: int, seconds: float = 30) -> None:
        """Until `threads` threads wait at the checkpoint; an AssertionError after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.marker.read_text()
            if text.isdigit() and int(text) >= threads:
                return
            time.sleep(0.02)
        waiting = self.marker.read_text() or "no"
        self.process.kill()
        out, err = self.process.communicate()
        raise AssertionError(f"{waiting} threads at the checkpoint after {seconds} s, not {threads}: {out}{err}")

    def release(self) -> float:
        """Lets the command go on; returns when (time.monotonic())."""
        self.marker.unlink()
        return time.monotonic()

    def finish(self, seconds: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.process.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"still running after {seconds} s: {out}{err}") from None
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)
