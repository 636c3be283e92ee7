"""Uploads against an SFTP server that does what OpenSSH's never does: a write that fails in the
middle, a close that fails, no posix-rename. A file appears whole under its final name or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aktin_sftp.config import Secret, SftpConfig
from aktin_sftp.errors import SyncError, UnavailableError
from aktin_sftp.sftp import Remote
from tests.peers.odd_sftp import PASSWORD, USER, OddSftpServer

SIZE = 343 << 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[OddSftpServer]:
    root = tmp_path / "served"
    root.mkdir()
    odd = OddSftpServer(root)
    yield odd
    odd.stop()


def remote(server: OddSftpServer) -> Remote:
    return Remote(SftpConfig(
        host="127.0.0.1", port=server.port, username=USER, password=Secret(PASSWORD), private_key_file=None,
        known_hosts=server.known_hosts, folder="/", timeout=10, parallel=1,
    ))


@pytest.fixture
def delivered(server: OddSftpServer, tmp_path: Path) -> bytes:
    """A first version already in place, which a failed upload must leave as it is."""
    first = os.urandom(SIZE)
    (tmp_path / "first").write_bytes(first)
    with remote(server) as sftp:
        assert sftp.upload(tmp_path / "first", "export_1.zip") == SIZE
    return first


@pytest.mark.parametrize("fault", ["a write past 100 kB fails", "the close fails"])
def test_a_refused_write_or_close_never_reaches_the_final_name(
    server: OddSftpServer, delivered: bytes, tmp_path: Path, fault: str
) -> None:
    if fault == "the close fails":
        server.behaviour.fail_close = True
    else:
        server.behaviour.fail_write_after = 100 << 10
    (tmp_path / "second").write_bytes(os.urandom(SIZE))
    with remote(server) as sftp, pytest.raises(SyncError, match=r"upload of /export_1\.zip failed"):
        sftp.upload(tmp_path / "second", "export_1.zip")
    assert (server.root / "export_1.zip").read_bytes() == delivered


@pytest.mark.parametrize("announced", [True, False])
def test_posix_rename_is_used_exactly_when_the_server_announces_it(
    server: OddSftpServer, delivered: bytes, tmp_path: Path, announced: bool
) -> None:
    server.behaviour.announce_posix_rename = announced
    server.behaviour.posix_renames = 0
    second = os.urandom(SIZE)
    (tmp_path / "second").write_bytes(second)
    with remote(server) as sftp:
        sftp.upload(tmp_path / "second", "export_1.zip")
    assert (server.root / "export_1.zip").read_bytes() == second
    assert sorted(p.name for p in server.root.iterdir()) == ["export_1.zip"]
    assert server.behaviour.posix_renames == (1 if announced else 0)


def test_a_connection_dropped_while_listing_is_a_clear_error(server: OddSftpServer) -> None:
    with remote(server) as sftp:
        server.stop()
        with pytest.raises(UnavailableError, match="listing of / failed: the SFTP connection was lost"):
            sftp.listdir()
