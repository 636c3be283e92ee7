"""Local preparation of a run, without peers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aktin_sftp import cli, sync
from aktin_sftp.errors import SyncError


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a directory as another user")
def test_root_does_not_write_into_the_service_users_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    with pytest.raises(SyncError, match=r"belongs to nobody: run as that user \('runuser -u nobody -- aktin-broker-sftp …'\)"):
        sync.prepare(state)


def test_the_state_directory_is_created_private(tmp_path: Path) -> None:
    sync.prepare(tmp_path / "a" / "state")
    assert (tmp_path / "a" / "state").stat().st_mode & 0o077 == 0


def test_only_our_own_leftovers_are_dropped(tmp_path: Path) -> None:
    ours = [tmp_path / f".aktin-broker-sftp.export_{i}.zip.{kind}" for i, kind in ((1, "download"), (22, "fernet"))]
    foreign = [tmp_path / name for name in ("work", "export_1.zip.download", ".aktin-broker-sftp.notes", "lock.txt")]
    for path in ours + foreign[1:]:
        path.write_bytes(b"x")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "operator.txt").write_bytes(b"mine")
    sync._drop_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in foreign)
    assert (tmp_path / "work" / "operator.txt").read_bytes() == b"mine"


def test_an_unexpected_error_is_one_line_without_its_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(_: object) -> None:
        raise ValueError("the-secret-value")

    monkeypatch.setattr(cli, "_status", boom)
    assert cli.main(["--config", str(tmp_path / "none.toml"), "status"]) == 70
    shown = capsys.readouterr().err
    assert shown.startswith("ERROR: internal error: ValueError in test_sync.py") and shown.count("\n") == 1
    assert "the-secret-value" not in shown and "Traceback" not in shown
