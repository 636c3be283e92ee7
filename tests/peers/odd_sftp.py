"""A small SFTP server (paramiko's server side) that misbehaves on purpose, for what a real
OpenSSH sshd does not do when asked: fail one write in the middle and accept the rest, fail the
close, announce no extensions, drop the connection in the middle of a write, allow fewer sessions
per login or refuse a further login. It serves one local directory on 127.0.0.1, password login
only."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from paramiko.common import AUTH_FAILED, AUTH_SUCCESSFUL, OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, OPEN_SUCCEEDED
from paramiko.sftp import CMD_CLOSE, CMD_VERSION, SFTP_FAILURE, SFTP_OK

USER = "odd"
PASSWORD = "odd-password"


class Behaviour:
    """What the server does wrong; each failure happens once."""

    def __init__(self) -> None:
        self.fail_write_after: int | None = None
        self.fail_close = False
        self.announce_posix_rename = False
        self.posix_renames = 0
        # Once a write at or past this offset arrives, the server reads nothing for a second
        # (the client's writes fill the SSH window and wait for it), then closes every connection.
        self.drop_at_write: int | None = None
        self.drop: Callable[[], None] = lambda: None
        # OpenSSH's MaxSessions: channels allowed on one login.
        self.sessions_per_login: int | None = None
        # Logins accepted; those after are refused.
        self.logins_allowed: int | None = None
        self.logins = 0


class _Auth(paramiko.ServerInterface):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sessions = 0

    def check_auth_password(self, username: str, password: str) -> int:
        if (username, password) != (USER, PASSWORD):
            return AUTH_FAILED
        allowed = self.behaviour.logins_allowed
        if allowed is not None and self.behaviour.logins >= allowed:
            return AUTH_FAILED
        self.behaviour.logins += 1
        return AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        limit = self.behaviour.sessions_per_login
        if kind != "session" or (limit is not None and self.sessions >= limit):
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.sessions += 1
        return OPEN_SUCCEEDED


def _local(root: Path, path: str) -> str:
    return str(root / path.lstrip("/"))


class _Handle(paramiko.SFTPHandle):
    def __init__(self, handle: Any, behaviour: Behaviour) -> None:
        super().__init__()
        self.handle = handle
        self.behaviour = behaviour

    def write(self, offset: int, data: Any) -> int:
        drop = self.behaviour.drop_at_write
        if drop is not None and offset >= drop:
            self.behaviour.drop_at_write = None
            time.sleep(1)
            self.behaviour.drop()
            return SFTP_FAILURE
        limit = self.behaviour.fail_write_after
        if limit is not None and offset >= limit:
            self.behaviour.fail_write_after = None
            return SFTP_FAILURE
        self.handle.seek(offset)
        self.handle.write(data)
        return SFTP_OK

    def close(self) -> None:
        self.handle.close()


def _files(root: Path, behaviour: Behaviour) -> type[paramiko.SFTPServerInterface]:
    class Files(paramiko.SFTPServerInterface):
        def open(self, path: str, flags: int, attr: Any) -> Any:
            try:
                handle = open(_local(root, path), "r+b" if not flags & os.O_TRUNC else "w+b")
            except OSError as exc:
                return paramiko.SFTPServer.convert_errno(exc.errno or 0)
            return _Handle(handle, behaviour)

        def stat(self, path: str) -> Any:
            try:
                return paramiko.SFTPAttributes.from_stat(os.stat(_local(root, path)))
            except OSError as exc:
                return paramiko.SFTPServer.convert_errno(exc.errno or 0)

        lstat = stat

        def list_folder(self, path: str) -> Any:
            local = _local(root, path)
            return [paramiko.SFTPAttributes.from_stat(os.stat(os.path.join(local, n)), n) for n in os.listdir(local)]

        def remove(self, path: str) -> int:
            try:
                os.remove(_local(root, path))
            except OSError as exc:
                return int(paramiko.SFTPServer.convert_errno(exc.errno or 0))
            return SFTP_OK

        def rename(self, oldpath: str, newpath: str) -> int:
            # As the SFTP drafts say: no renaming onto an existing file.
            if os.path.exists(_local(root, newpath)):
                return SFTP_FAILURE
            os.rename(_local(root, oldpath), _local(root, newpath))
            return SFTP_OK

        def posix_rename(self, oldpath: str, newpath: str) -> int:
            behaviour.posix_renames += 1
            os.replace(_local(root, oldpath), _local(root, newpath))
            return SFTP_OK

    return Files


def _subsystem(behaviour: Behaviour) -> type[paramiko.SFTPServer]:
    base: Any = paramiko.SFTPServer

    # paramiko's server internals, which its type stubs leave out.
    class Subsystem(base):  # type: ignore[misc]
        def _send_server_version(self) -> int:
            if not behaviour.announce_posix_rename:
                return int(super()._send_server_version())
            _kind, data = self._read_packet()
            message = paramiko.Message()
            message.add_int(3)
            message.add("posix-rename@openssh.com", "1")
            self._send_packet(CMD_VERSION, message)
            return int.from_bytes(data[:4], "big")

        def _process(self, kind: int, number: int, message: paramiko.Message) -> None:
            if kind == CMD_CLOSE and behaviour.fail_close:
                behaviour.fail_close = False
                handle = message.get_binary()
                self.file_table.pop(handle).close()
                self._send_status(number, SFTP_FAILURE, "close failed")
                return
            super()._process(kind, number, message)

    return Subsystem


class OddSftpServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.behaviour = Behaviour()
        self.behaviour.drop = self.drop
        self.host_key = paramiko.Ed25519Key.from_private_key_file(self._make_key(root))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.known_hosts = root.parent / f"{root.name}.known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n")
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _make_key(root: Path) -> str:
        path = root.parent / f"{root.name}.host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return str(path)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(connection)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", _subsystem(self.behaviour), _files(self.root, self.behaviour))
            transport.start_server(server=_Auth(self.behaviour))
            self.transports.append(transport)

    def drop(self) -> None:
        """Every connection closed; new ones are still accepted."""
        for transport in self.transports:
            transport.close()

    def stop(self) -> None:
        self.listener.close()
        self.drop()
