"""Uploads against an SFTP server that does what OpenSSH's does not do when asked: a write that
fails in the middle, a close that fails, no posix-rename, a connection dropped while writing,
fewer sessions per login. A file appears whole under its final name or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp.config import Secret, SftpConfig
from aktin_sftp.errors import SyncError, UnavailableError
from aktin_sftp.sftp import Remote
from tests.conftest import Setup
from tests.peers.broker import BrokerServer
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


def test_a_connection_dropped_while_writing_is_a_clear_error_and_the_earlier_file_stays(
    server: OddSftpServer, delivered: bytes, tmp_path: Path
) -> None:
    server.behaviour.drop_at_write = 100 << 10
    # More than the SSH window, so that the upload is still writing when the connection ends.
    (tmp_path / "second").write_bytes(os.urandom(8 << 20))
    with remote(server) as sftp, pytest.raises(
        UnavailableError, match=r"upload of /export_1\.zip failed: the SFTP connection was lost"
    ):
        sftp.upload(tmp_path / "second", "export_1.zip")
    assert (server.root / "export_1.zip").read_bytes() == delivered


def odd_config(setup: Setup, server: OddSftpServer, parallel: int) -> Path:
    """This test's config, but for the odd server's folder and `parallel` SFTP channels."""
    text = setup.config.read_text()
    sftp = text[text.index("[sftp]"):text.index("[encryption]")]
    odd = f"""[sftp]
host = "127.0.0.1"
port = {server.port}
username = "{USER}"
password = "{PASSWORD}"
known_hosts = "{server.known_hosts}"
folder = "/"
parallel = {parallel}

"""
    path = setup.config.with_name("odd.toml")
    path.write_text(text.replace(sftp, odd))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("further_login", ["accepted", "refused"])
def test_a_server_allowing_fewer_sessions_still_gets_every_request_delivered(
    server: OddSftpServer, setup: Setup, broker_server: BrokerServer, further_login: str
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(6)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(SIZE), "application/octet-stream")
    server.behaviour.sessions_per_login = 2
    server.behaviour.logins_allowed = 2 if further_login == "accepted" else 1

    done = setup.run("run", config=odd_config(setup, server, parallel=4))

    assert done.returncode == 0, done.stderr
    fewer = "delivering over fewer SFTP channels than [sftp] parallel = 4"
    assert (fewer in done.stderr) == (further_login == "refused"), done.stderr
    assert server.behaviour.logins == server.behaviour.logins_allowed
    assert sorted(p.name for p in server.root.iterdir()) == sorted([*(f"export_{i}.zip" for i in ids), "status.xml"])
    for request_id in ids:
        assert Fernet(setup.key).decrypt((server.root / f"export_{request_id}.zip").read_bytes())[:2] == b"PK"
