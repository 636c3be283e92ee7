"""The last delivery run (start, end, outcome) and the last successful one, for `status` and
for monitoring (`health`, in the Nagios plugin format). Kept beside status.xml, which goes to the
recipient and keeps the upstream uploader's format, in a file of its own."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from aktin_sftp.errors import EX_FAILURE, EX_SOFTWARE, SyncError
from aktin_sftp.files import write_atomic
from aktin_sftp.state import TIME_FORMAT

NAME = "last-run.json"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_LABELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LastRun:
    started: str
    ended: str
    exit_code: int
    # The one-line reason of a failed run; empty for a successful one.
    reason: str
    last_success: str | None


class Damaged(SyncError):
    pass


def parse(data: bytes, source: str) -> LastRun:
    try:
        run = LastRun(**json.loads(data))
        _moment(run.started)
        _moment(run.ended)
        if run.last_success is not None:
            _moment(run.last_success)
        if not isinstance(run.exit_code, int) or not isinstance(run.reason, str):
            raise TypeError("exit_code or reason")
    except (ValueError, TypeError) as exc:
        raise Damaged(f"{source}: not a record of a run ({type(exc).__name__})") from None
    return run


def load(state_dir: Path) -> LastRun | None:
    path = state_dir / NAME
    try:
        return parse(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


@contextmanager
def recorded(state_dir: Path) -> Iterator[None]:
    """Records the outcome of the run it wraps. The run holds the state's lock, so no other
    process writes the record meanwhile, and only a user allowed to keep the state (not root in
    the service's directory) gets this far. A run ended by a signal records nothing."""
    started = datetime.now(timezone.utc)
    code, reason = EX_SOFTWARE, "ended by an internal error (see the journal)"
    try:
        yield
        code, reason = 0, ""
    except SyncError as exc:
        code, reason = exc.exit_code, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        code, reason = EX_FAILURE, f"local file error{where}: {exc.strerror or exc}"
        raise
    finally:
        try:
            record(state_dir, started, code, reason)
        except OSError as exc:
            # The run's own outcome matters more than its record: a failed record is no failed run.
            log.warning("could not record the run in %s (%s); health and status show an older run", state_dir,
                        exc.strerror)


def record(state_dir: Path, started: datetime, exit_code: int, reason: str) -> None:
    ended = datetime.now(timezone.utc)
    try:
        before = load(state_dir)
    except Damaged as exc:
        # Only its last success is taken over; a damaged one must not stop every later record.
        log.warning("%s; it is replaced by the record of this run", exc)
        before = None
    success = ended.strftime(TIME_FORMAT) if exit_code == 0 else before.last_success if before else None
    run = LastRun(started.strftime(TIME_FORMAT), ended.strftime(TIME_FORMAT), exit_code, reason, success)
    write_atomic(state_dir / NAME, json.dumps(asdict(run), indent=1).encode() + b"\n")


def _moment(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def verdict(run: LastRun | None, delivered: int, now: datetime, warn: float, crit: float) -> tuple[int, str]:
    """The Nagios plugin line and exit code: the age of the last success decides, and a failed
    last run is at least a warning."""
    if run is None:
        return WARNING, f"WARNING - no delivery run recorded yet | delivered={delivered}"
    age = None if run.last_success is None else (now - _moment(run.last_success)).total_seconds()
    duration = (_moment(run.ended) - _moment(run.started)).total_seconds()
    perf = f"delivered={delivered} last_run_duration={duration:.0f}s"
    if age is not None:
        perf += f" last_success_age={age:.0f}s;{warn:.0f};{crit:.0f}"
    # The plugin format splits at '|' and reads one line.
    reason = " ".join(run.reason.replace("|", "/").split())
    failed = f"last run at {run.ended} UTC failed (exit {run.exit_code}): {reason}"
    if age is None:
        code, text = CRITICAL, f"no successful run recorded; {failed}"
    elif age > crit:
        code, text = CRITICAL, f"last successful run {_ago(age)} ago" + (f"; {failed}" if run.exit_code else "")
    elif run.exit_code:
        code, text = WARNING, f"{failed}; last success {_ago(age)} ago"
    elif age > warn:
        code, text = WARNING, f"last successful run {_ago(age)} ago"
    else:
        code, text = OK, f"last run at {run.ended} UTC delivered; {delivered} requests delivered"
    return code, f"{_LABELS[code]} - {text} | {perf}"


def unknown(problem: str) -> tuple[int, str]:
    return UNKNOWN, f"UNKNOWN - {problem}"


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def duration(text: str) -> float:
    """`90m`, `2h`, `1d` or plain seconds, for --warn and --crit."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is no duration (write 90m, 2h, 1d or seconds)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is no duration (write 90m, 2h, 1d or seconds)")
    return value
