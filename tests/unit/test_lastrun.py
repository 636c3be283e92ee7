"""`health`: one Nagios plugin line from the local state, for each outcome monitoring must tell apart."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import cli, lastrun, sync
from aktin_sftp.state import TIME_FORMAT

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def at(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime(TIME_FORMAT)


def run(ended_hours_ago: float, code: int, success_hours_ago: float | None) -> lastrun.LastRun:
    success = None if success_hours_ago is None else at(success_hours_ago)
    return lastrun.LastRun(at(ended_hours_ago + 0.01), at(ended_hours_ago), code, "broker unreachable" if code else "", success)


@pytest.mark.parametrize(
    ("last", "code", "words"),
    [
        (None, 1, "WARNING - no delivery run recorded yet"),
        (run(0.5, 0, 0.5), 0, "OK - last run at"),
        (run(3, 0, 3), 1, "WARNING - last successful run 3 h 0 min ago"),
        (run(7, 0, 7), 2, "CRITICAL - last successful run 7 h 0 min ago"),
        (run(0.5, 69, 1.5), 1, "WARNING - last run at 2026-12-03 11:30:00 UTC failed (exit 69): broker unreachable"),
        (run(0.5, 69, 8), 2, "CRITICAL - last successful run 8 h 0 min ago; last run at"),
        (run(0.5, 78, None), 2, "CRITICAL - no successful run recorded; last run at"),
    ],
    ids=["no run yet", "recent success", "old success", "very old success", "last run failed", "failing for long",
         "never succeeded"],
)
def test_each_outcome_has_its_exit_code_and_line(last: lastrun.LastRun | None, code: int, words: str) -> None:
    got, line = lastrun.verdict(last, 4, NOW, 2 * 3600, 6 * 3600)
    assert got == code and line.startswith(words), line
    assert "|" in line and "delivered=4" in line.split("|")[1]
    if last is not None and last.last_success:
        assert "last_success_age=" in line and ";7200;21600" in line


def test_durations() -> None:
    assert [lastrun.duration(t) for t in ("90m", "2h", "1d", "600")] == [5400, 7200, 86400, 600]
    for wrong in ("soon", "-1h", "0"):
        with pytest.raises(ValueError, match="is no duration"):
            lastrun.duration(wrong)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for name, text in (("fernet.key", Fernet.generate_key().decode()), ("known_hosts", "[127.0.0.1]:1 ssh-ed25519 AAAA\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "sftp.toml"
    path.write_text(f"""[broker]
url = "http://127.0.0.1:1"
api_key = "k"
tag = "t"
timeout = 2
[sftp]
host = "127.0.0.1"
port = 1
username = "u"
password = "p"
known_hosts = "known_hosts"
folder = "f"
[encryption]
key_file = "fernet.key"
[state]
directory = "{tmp_path / 'state'}"
""")
    path.chmod(0o600)
    return path


def test_the_command_reads_the_state_and_exits_with_the_verdict(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    assert cli.main(["--config", str(config), "health"]) == 1
    assert capsys.readouterr().out.startswith("WARNING - no delivery run recorded yet")
    state.mkdir()
    lastrun.record(state, datetime.now(timezone.utc), 0, "")
    assert cli.main(["--config", str(config), "health", "--warn", "1h", "--crit", "2h"]) == 0
    assert capsys.readouterr().out.startswith("OK - ")
    lastrun.record(state, datetime.now(timezone.utc), 69, "sftp 127.0.0.1:22 did not answer")
    assert cli.main(["--config", str(config), "health"]) == 1
    assert "failed (exit 69): sftp 127.0.0.1:22 did not answer" in capsys.readouterr().out
    assert sorted(p.name for p in state.iterdir()) == ["last-run.json"]


NULL_TIMES = b'{"started": null, "ended": null, "exit_code": 0, "reason": "", "last_success": null}'


@pytest.mark.parametrize("damage", [b"{not json", b'{"started": "yesterday"}', b"[]", NULL_TIMES])
def test_a_damaged_record_is_unknown(config: Path, damage: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    state.mkdir()
    (state / lastrun.NAME).write_bytes(damage)
    assert cli.main(["--config", str(config), "health"]) == 3
    assert capsys.readouterr().out.startswith(f"UNKNOWN - {state / lastrun.NAME}: not a record of a run")


def test_a_damaged_status_or_config_is_unknown(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    state.mkdir()
    (state / "status.xml").write_bytes(b"<status><request-status>")
    assert cli.main(["--config", str(config), "health"]) == 3
    assert capsys.readouterr().out.startswith("UNKNOWN - ")
    assert cli.main(["--config", str(config.parent / "missing.toml"), "health"]) == 3
    assert "config file not found" in capsys.readouterr().out


def test_a_failed_run_is_recorded_with_its_exit_code_and_reason(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nobody reads the journal: health must say the last run failed, and why."""
    assert cli.main(["--config", str(config), "run"]) == 69
    assert cli.main(["--config", str(config), "health"]) == 2
    line = capsys.readouterr().out
    assert line.startswith("CRITICAL - no successful run recorded; last run at ") and "failed (exit 69): broker at" in line


def test_an_internal_error_is_recorded_as_70(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sync, "observe", broken)
    assert cli.main(["--config", str(config), "run"]) == 70
    record = json.loads((config.parent / "state" / lastrun.NAME).read_bytes())
    assert (record["exit_code"], record["reason"]) == (70, "ended by an internal error (see the journal)")


def test_a_damaged_record_is_replaced_by_the_next_run_and_does_not_change_its_exit_code(config: Path) -> None:
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    (state / lastrun.NAME).write_bytes(b"{not json")
    assert cli.main(["--config", str(config), "run"]) == 69
    assert lastrun.load(state) is not None and lastrun.load(state).exit_code == 69  # type: ignore[union-attr]


@pytest.mark.skipif(os.geteuid() != 0, reason="root's refusal is only seen as root (CI runs as root)")
def test_root_refused_in_the_services_state_directory_leaves_no_file_there(config: Path) -> None:
    """A file root wrote there could never be replaced by the service."""
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    assert cli.main(["--config", str(config), "run"]) == 1
    assert list(state.iterdir()) == []


def test_a_reason_cannot_break_the_plugin_line() -> None:
    run = lastrun.LastRun(at(1.01), at(1), 69, "a | b\nc", at(1.5))
    code, line = lastrun.verdict(run, 1, NOW, 7200, 21600)
    assert code == 1 and "\n" not in line and line.count("|") == 1 and "a / b c" in line


@pytest.mark.parametrize("warn, crit", [("nan", "6h"), ("inf", "6h"), ("6h", "2h")])
def test_thresholds_that_say_nothing_are_unknown(config: Path, warn: str, crit: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(config), "health", "--warn", warn, "--crit", crit]) == 3
    assert capsys.readouterr().out.startswith("UNKNOWN - ")


def test_status_shows_the_table_beside_a_damaged_record(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    (state / lastrun.NAME).write_bytes(b"[]")
    assert cli.main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("last run: unknown (") and "(nothing delivered yet)" in out
