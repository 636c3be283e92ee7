"""The SFTP side alone against the real OpenSSH sshd: logins, host keys, atomic uploads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aktin_sftp.config import Secret, SftpConfig
from aktin_sftp.errors import ConfigError, SyncError, UnavailableError
from aktin_sftp.sftp import Remote, write_size
from tests.peers import free_port
from tests.peers.sshd import PASSWORD, UID, USER, SshServer


@pytest.fixture
def folder(request: pytest.FixtureRequest, ssh_server: SshServer) -> Path:
    return ssh_server.folder(request.node.name[:60])


def settings(server: SshServer, folder: Path, **changes: object) -> SftpConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": server.port, "username": USER, "password": Secret(PASSWORD),
        "private_key_file": None, "known_hosts": server.known_hosts, "folder": SshServer.remote(folder), "timeout": 10,
        "parallel": 8,
    }
    values.update(changes)
    return SftpConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("server", ["as it is", "not OpenSSH"])
def test_upload_replaces_the_file_whole_and_leaves_no_partial(
    ssh_server: SshServer, folder: Path, tmp_path: Path, server: str
) -> None:
    local = tmp_path / "token"
    for content in (os.urandom(3 << 20), b"smaller second version"):
        local.write_bytes(content)
        with Remote(settings(ssh_server, folder)) as remote:
            if server == "not OpenSSH":
                # The request size for servers that promise no more than the SFTP drafts' 32 KiB.
                remote.write_size = write_size("SSH-2.0-SomeOtherServer", remote.sftp.sock.out_max_packet_size)
            assert remote.upload(local, "export_1.zip") == len(content)
        assert (folder / "export_1.zip").read_bytes() == content
        assert sorted(p.name for p in folder.iterdir()) == ["export_1.zip"]


def test_remove_reports_whether_the_file_was_there(ssh_server: SshServer, folder: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with Remote(settings(ssh_server, folder)) as remote:
        remote.upload(tmp_path / "f", "export_2.zip")
        assert remote.remove("export_2.zip") is True
        assert remote.remove("export_2.zip") is False
    assert list(folder.iterdir()) == []


def test_private_key_login(ssh_server: SshServer, folder: Path) -> None:
    ssh_server.client_key.chmod(0o600)
    with Remote(settings(ssh_server, folder, password=None, private_key_file=ssh_server.client_key)) as remote:
        assert remote.listdir() == []


def test_wrong_password(ssh_server: SshServer, folder: Path) -> None:
    with pytest.raises(ConfigError, match="rejected the login"):
        Remote(settings(ssh_server, folder, password=Secret("nope")))


def test_unknown_and_changed_host_keys_are_refused(ssh_server: SshServer, folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is not in"):
        Remote(settings(ssh_server, folder, known_hosts=empty))
    assert empty.read_text() == ""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kind, blob = (tmp_path / "k.pub").read_text().split()[:2]
    empty.write_text(f"[127.0.0.1]:{ssh_server.port} {kind} {blob}\n")
    with pytest.raises(ConfigError, match="differs from"):
        Remote(settings(ssh_server, folder, known_hosts=empty))


def test_nothing_listening(ssh_server: SshServer, folder: Path) -> None:
    with pytest.raises(UnavailableError, match="unreachable"):
        Remote(settings(ssh_server, folder, port=free_port()))


def test_read_only_folder_fails_the_upload_clearly(ssh_server: SshServer, folder: Path, tmp_path: Path) -> None:
    os.chown(folder, 0, 0)
    (tmp_path / "f").write_bytes(b"x")
    with Remote(settings(ssh_server, folder)) as remote, pytest.raises(SyncError, match="permission denied"):
        remote.upload(tmp_path / "f", "export_3.zip")
    os.chown(folder, UID, UID)
    assert list(folder.iterdir()) == []
