"""`health`: one Nagios plugin line from the local state, for each outcome monitoring must tell apart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import cli, lastrun
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
    for name, text in (("fernet.key", Fernet.generate_key().decode()), ("known_hosts", "[h]:22 ssh-ed25519 AAAA\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "sftp.toml"
    path.write_text(f"""[broker]
url = "http://localhost:1"
api_key = "k"
tag = "t"
[sftp]
host = "h"
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


@pytest.mark.parametrize("damage", [b"{not json", b'{"started": "yesterday"}', b"[]"])
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
