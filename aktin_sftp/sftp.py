"""The recipient's SFTP folder: host-key-verified login, uploads that appear whole or not at all."""

from __future__ import annotations

import inspect
import logging
import os
import posixpath
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko

from aktin_sftp.config import SftpConfig
from aktin_sftp.crypto import Writer
from aktin_sftp.errors import ConfigError, SyncError, UnavailableError
from aktin_sftp.faults import checkpoint
from aktin_sftp.transfer import POSIX_RENAME, open_client
from aktin_sftp.watchdog import Watch, Watchdog, cut

log = logging.getLogger(__name__)


# SFTP write request = length, type, id, handle string, offset, data string: 25 bytes plus the
# handle, which the protocol allows to be up to 256 bytes long.
WRITE_OVERHEAD = 25 + 256
OPENSSH_MAX_WRITE = 261120
Progress = Callable[[int, int], None]
# What a broken connection or a refusing server raises anywhere in paramiko.
TRANSFER_ERRORS = (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)
PARTIAL = re.compile(r"\.(export_[0-9]+\.zip|status\.xml|aktin-speed-probe)\.part")


class _GcmFirstTransport(paramiko.Transport):
    """AES-GCM needs no separate MAC pass, which makes paramiko's uploads markedly faster;
    the other ciphers stay as fallbacks for servers without it."""

    _preferred_ciphers = tuple(
        sorted(paramiko.Transport._preferred_ciphers, key=lambda name: "gcm@openssh.com" not in name)  # type: ignore[attr-defined]
    )


def _transport_options() -> dict[str, Any]:
    # paramiko before 3.2 cannot take a transport class (and before 3.3 has no GCM anyway).
    if "transport_factory" in inspect.signature(paramiko.SSHClient.connect).parameters:
        return {"transport_factory": _GcmFirstTransport}
    return {}


def _login_error(config: SftpConfig, exc: BaseException, stalled: str | None) -> SyncError:
    where = f"SFTP server {config.host}:{config.port}"
    if stalled is not None or isinstance(exc, socket.timeout) or "protocol banner" in str(exc):
        return UnavailableError(
            f"{where} did not answer {stalled or 'the login'} within [sftp] timeout = {config.timeout:g} s; "
            "is it reachable? Raise [sftp] timeout if the link is that slow"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return ConfigError(
            f"{where} presented a host key that differs from {config.known_hosts}; refused. "
            "If the server's key really changed, verify it with the recipient and update that file"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return ConfigError(f"{where} rejected the login of {config.username!r}; check [sftp] password or private_key_file")
    if "not found in known_hosts" in str(exc):
        return ConfigError(
            f"{where} is not in {config.known_hosts}; add its verified host key there "
            "(ssh-keyscan shows it, confirm it with the recipient)"
        )
    if isinstance(exc, paramiko.SSHException):
        return UnavailableError(f"{where}: SSH or SFTP failed ({exc or type(exc).__name__})")
    return UnavailableError(f"{where} is unreachable ({exc or type(exc).__name__})")


def load_known_hosts(path: Path, keys: paramiko.HostKeys) -> None:
    """Adds the usable keys of an OpenSSH known_hosts file to `keys`, or raises ConfigError
    naming the line that makes the file unusable. paramiko's own loader fails outside any
    handler on lines that system-wide files often have."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a known_hosts file ({exc}); check [sftp] known_hosts") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}, line {number}"
        if fields[0] == "@revoked":
            # Silently skipping it would trust a key someone meant to distrust.
            raise ConfigError(
                f"{where}: @revoked cannot be honoured by this client; delete the revoked key's own lines "
                "and this one (or point [sftp] known_hosts at a file of the recipient's host keys)"
            )
        if fields[0].startswith("@"):
            # @cert-authority: host certificates, which paramiko cannot check. Leaving such a
            # line out only trusts less.
            log.debug("%s: %s is not supported and is skipped", where, fields[0])
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(fields), number)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: not a valid known_hosts line ({type(exc).__name__})") from None
        if entry is None:
            if len(fields) < 3:
                raise ConfigError(f"{where}: not a valid known_hosts line (host names, key type and key expected)")
            log.debug("%s: key type %s is not supported and is skipped", where, fields[1])
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
            # OpenSSH writes port 22 as the bare host name, and looks it up that way.
            bare = re.fullmatch(r"\[(.+)\]:22", name)
            if bare:
                keys.add(bare.group(1), entry.key.get_name(), entry.key)


def write_size(server: str, packet_size: int) -> int:
    """As large as the server takes: paramiko spends most of an upload's time on per-request
    Python work. OpenSSH's sftp-server takes 255 KiB per write (what it announces as
    limits@openssh.com); other servers get requests that fit one SSH packet of at most the
    SFTP drafts' 32 KiB."""
    if server.startswith("SSH-2.0-OpenSSH"):
        return OPENSSH_MAX_WRITE
    return min(packet_size, 1 << 15) - WRITE_OVERHEAD


def partial_name(name: str) -> str:
    """Where an upload lands until it is complete; hidden, and not matching `export_*.zip`."""
    return f".{name}.part"


class _Login:
    """One SSH connection: its socket, which only this service created and may cut, and the
    watchdog and keepalive that bound every wait on it."""

    def __init__(self, config: SftpConfig) -> None:
        self.config = config
        self.where = f"SFTP server {config.host}:{config.port}"
        self.client = paramiko.SSHClient()
        self.sock: socket.socket | None = None
        # What was waited for when the watchdog cut the connection.
        self.stalled: str | None = None
        self.watchdog = Watchdog(f"watchdog {self.where}")
        self.closing = threading.Event()
        self.keepalive: threading.Thread | None = None

    @contextmanager
    def waiting(self, what: str) -> Iterator[Watch]:
        """Bounds a wait for the server: no progress for [sftp] timeout seconds cuts the connection."""
        with self.watchdog.watch(what, self.config.timeout, lambda: self._cut(what)) as watch:
            yield watch

    def _cut(self, what: str) -> None:
        self.stalled = self.stalled or what
        log.debug("%s did not answer %s for %g s; cutting the connection", self.where, what, self.config.timeout)
        cut(self.sock)

    def connect(self) -> None:
        config = self.config
        load_known_hosts(config.known_hosts, self.client.get_host_keys())
        # Never learn a key: an unknown or changed host key is refused.
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with self.waiting("the login"):
            self.sock = socket.create_connection((config.host, config.port), timeout=config.timeout)
            # Without TCP_NODELAY, small SFTP requests wait for delayed ACKs.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client.connect(
                config.host,
                port=config.port,
                username=config.username,
                password=config.password.reveal() if config.password else None,
                key_filename=str(config.private_key_file) if config.private_key_file else None,
                timeout=config.timeout,
                banner_timeout=config.timeout,
                auth_timeout=config.timeout,
                allow_agent=False,
                look_for_keys=False,
                sock=self.sock,
                **_transport_options(),
            )
        self.keepalive = threading.Thread(target=self._keep_alive, name=f"keepalive {self.where}", daemon=True)
        self.keepalive.start()

    def _keep_alive(self) -> None:
        """While no other wait watches the connection, asks the server for a reply every half
        timeout (as OpenSSH's ServerAliveInterval does): a server gone quiet is cut, and a NAT or
        firewall on the way keeps the idle connection open."""
        while not self.closing.wait(self.config.timeout / 2):
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                return
            if not self.watchdog.busy():
                try:
                    with self.waiting("a keepalive"):
                        # Any server answers an unknown global request with a failure: that is the reply.
                        transport.global_request("keepalive@openssh.com", wait=True)
                except TRANSFER_ERRORS:
                    # The connection went down under it; the next wait on it says so.
                    return

    def close(self) -> None:
        self.closing.set()
        with self.waiting("the close of the connection"):
            self.client.close()
        if self.keepalive is not None:
            self.keepalive.join()
        self.watchdog.close()


class Remote:
    """One SFTP channel into the configured folder. `Remote(config)` logs in; `more_channels`
    adds channels for deliveries at the same time. Every wait for the server is bounded by
    [sftp] timeout: one without progress for that long cuts the connection (UnavailableError)."""

    def __init__(self, config: SftpConfig, shared: Remote | None = None) -> None:
        self.config = config
        self.folder = config.folder
        # Further logins that this one opened for channels beyond the server's session limit.
        self.logins: list[Remote] = []
        self.owns_login = shared is None
        self.login: _Login = shared.login if shared else _Login(config)
        self.client = self.login.client
        opened = False
        started = time.monotonic()
        try:
            if shared is None:
                self.login.connect()
            transport = self.client.get_transport()
            assert transport is not None
            self.cipher: str = getattr(transport, "remote_cipher", "unknown")
            self.server: str = transport.remote_version
            with self.login.waiting("the opening of an SFTP channel"):
                self.sftp = open_client(transport)
            self.write_size = write_size(self.server, self.sftp.sock.out_max_packet_size)
            opened = True
        except TRANSFER_ERRORS as exc:
            if shared is None:
                # paramiko's own login timeouts end in various errors ("No existing session").
                slow = time.monotonic() - started >= config.timeout
                raise _login_error(config, exc, self.login.stalled or ("the login" if slow else None)) from None
            raise
        finally:
            if not opened and shared is None:
                self.login.close()

    def more_channels(self, count: int, ready: Callable[[Remote], None]) -> None:
        """Opens `count` further channels and hands each to `ready` as soon as it is open: those
        on this login all at once (one round trip), then those the server refused (OpenSSH
        allows MaxSessions, 10 by default, per connection) on a further login."""
        if count < 1:
            return
        with ThreadPoolExecutor(count) as pool:
            tries = list(pool.map(lambda _: self._channel_or_refusal(), range(count)))
        refused = 0
        for channel in tries:
            if channel is None:
                refused += 1
            else:
                ready(channel)
        if refused:
            log.debug("the SFTP server refused %d more channels on one login; logging in once more", refused)
            extra = Remote(self.config)
            self.logins.append(extra)
            ready(extra)
            extra.more_channels(refused - 1, ready)

    def _channel_or_refusal(self) -> Remote | None:
        try:
            return Remote(self.config, shared=self)
        except paramiko.ChannelException:
            return None
        except paramiko.SSHException as exc:
            transport = self.client.get_transport()
            # paramiko keeps one refusal per connection: of several refused at once, the
            # others see only "Unable to open channel", on a connection that is still fine.
            if transport is not None and transport.is_active():
                return None
            raise self._transfer_error("opening another SFTP channel", exc) from None
        except TRANSFER_ERRORS as exc:
            raise self._transfer_error("opening another SFTP channel", exc) from None

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the login (and every channel on it), or only the channel of a shared one."""
        for login in self.logins:
            login.close()
        if self.owns_login:
            self.login.close()
        else:
            with self._waiting("the close of an SFTP channel"):
                self.sftp.close()

    @contextmanager
    def _waiting(self, what: str) -> Iterator[Watch]:
        """A wait on this channel: every packet the server sends on it counts as progress."""
        with self.login.waiting(what) as watch:
            self.sftp.progress = watch.moved
            try:
                yield watch
            finally:
                self.sftp.progress = None

    def path(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def upload(self, local: Path, name: str, progress: Progress | None = None) -> int:
        """Uploads under a temporary name and renames it into place once the server has
        confirmed every write and the close."""
        final, partial = self.path(name), self.path(partial_name(name))
        size = local.stat().st_size
        what = f"the upload of {final}"
        try:
            with self._waiting(what) as watch, open(local, "rb") as source:

                def sent(count: int) -> None:
                    # A write that went out was let through by the server's window: progress.
                    watch.moved()
                    checkpoint(f"upload:{name}")
                    if progress:
                        progress(count, size)

                written = self.sftp.write_file(partial, iter(lambda: source.read(self.write_size), b""), sent)
            checkpoint(f"rename:{name}")
            with self._waiting(f"the rename of {partial} to {final}"):
                self._rename(partial, final)
        except TRANSFER_ERRORS as exc:
            raise self._transfer_error(what, exc) from None
        return written

    def measure_upload(self, size: int) -> float:
        """Bytes per second for `size` random bytes written to a hidden file, removed again."""
        probe = self.path(partial_name("aktin-speed-probe"))
        block = os.urandom(self.write_size)
        what = f"the speed probe {probe}"
        try:
            with self._waiting(what) as watch:
                started = time.monotonic()
                written = self.sftp.write_file(
                    probe, (block for _ in range(max(1, size // len(block)))), lambda _: watch.moved()
                )
                seconds = time.monotonic() - started
                self.sftp.remove(probe)
        except TRANSFER_ERRORS as exc:
            raise self._transfer_error(what, exc) from None
        return written / seconds

    def remove(self, name: str) -> bool:
        """Removes a file; False when it was not there (anymore)."""
        target = self.path(name)
        checkpoint("sftp:remove")
        try:
            with self._waiting(f"the removal of {target}"):
                self.sftp.remove(target)
        except FileNotFoundError:
            return False
        except TRANSFER_ERRORS as exc:
            raise self._transfer_error(f"the removal of {target}", exc) from None
        return True

    def listdir(self) -> list[str]:
        return sorted(self.listing())

    def listing(self) -> dict[str, int]:
        """Every file in the folder with its size, from one directory listing."""
        what = f"the listing of {self.folder}"
        checkpoint("sftp:listing")
        try:
            with self._waiting(what):
                return {a.filename: a.st_size or 0 for a in self.sftp.listdir_attr(self.folder)}
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise ConfigError(f"SFTP folder {self.folder!r} cannot be listed ({exc}); check [sftp] folder") from None
        except TRANSFER_ERRORS as exc:
            raise self._transfer_error(what, exc) from None

    def download(self, name: str, local: Writer, most: int) -> None:
        """Downloads at most `most` bytes of `name`, and asks the server for no more: paramiko's
        getfo asks for the whole file at once and keeps what arrives, so a file far larger than
        the caller expects would cost its whole size in transfer and memory. What the server
        refuses (FileNotFoundError, PermissionError, ...) is raised as it is while the
        connection holds; a lost or stalled connection is an UnavailableError."""
        source = self.path(name)
        what = f"the download of {source}"
        checkpoint("sftp:download")
        try:
            with self._waiting(what):
                self.sftp.read_file(source, local, most)
        except TRANSFER_ERRORS as exc:
            error = self._transfer_error(what, exc)
            if isinstance(exc, OSError) and not isinstance(error, UnavailableError):
                raise
            raise error from None

    def remove_partials(self) -> None:
        """Drops what an interrupted run left under temporary names (only names we make)."""
        for name in self.listdir():
            if PARTIAL.fullmatch(name):
                log.info("removing %s left by an interrupted run", self.path(name))
                self.remove(name)

    def _transfer_error(self, what: str, exc: BaseException) -> SyncError:
        stalled = self.login.stalled
        if stalled is not None:
            return UnavailableError(
                f"{self.login.where} did not answer {stalled} for [sftp] timeout = {self.config.timeout:g} s, so "
                f"{what} failed and the connection was closed; raise [sftp] timeout if the link is that slow"
            )
        transport = self.client.get_transport()
        # A dropped connection surfaces as EOFError, SSHException or a plain OSError ("Socket is
        # closed"), depending on where paramiko notices; the transport's state says which it was.
        if transport is None or not transport.is_active() or isinstance(exc, (EOFError, paramiko.SSHException)):
            return UnavailableError(f"{what} failed: the SFTP connection was lost ({exc or type(exc).__name__})")
        if isinstance(exc, PermissionError):
            return SyncError(f"{what} failed: permission denied on the SFTP server; is [sftp] folder writable?")
        # OpenSSH reports a full disk or an exceeded quota only as a generic "Failure".
        return SyncError(f"{what} failed: {exc or type(exc).__name__} (a full disk or quota on the server shows up this way)")

    def _rename(self, source: str, target: str) -> None:
        if self.sftp.announces(POSIX_RENAME):
            self.sftp.posix_rename(source, target)
            return
        # Without posix-rename a server refuses to rename onto an existing file: the old file
        # goes first, so the final name is briefly absent, never partial.
        try:
            self.sftp.remove(target)
        except FileNotFoundError:
            pass
        self.sftp.rename(source, target)
