"""Local preparation of a run, without peers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aktin_sftp import sync
from aktin_sftp.errors import SyncError


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a directory as another user")
def test_root_does_not_write_into_the_service_users_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    with pytest.raises(SyncError, match=r"belongs to nobody: run as that user \('sudo -u nobody aktin-broker-sftp run'\)"):
        sync._prepare(state)


def test_the_state_directory_is_created_private(tmp_path: Path) -> None:
    sync._prepare(tmp_path / "a" / "state")
    assert (tmp_path / "a" / "state").stat().st_mode & 0o077 == 0
