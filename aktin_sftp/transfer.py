"""An SFTP client that checks every reply of an upload and knows what the server announced.

paramiko's own file object drops the replies of pipelined writes that are still pending when the
file is closed, and swallows an error of the close itself: a server that fails one write in the
middle and accepts the rest leaves a full-size file with a hole, which nothing would notice. Here
each write and the close are sent back to back and every one of their replies is read and checked.
Its reads of a whole file (getfo) ask for all of it at once: here a download asks for no more than
the caller takes.
paramiko also reads the server's version packet without keeping the extensions it announces;
they decide, for instance, whether `posix-rename@openssh.com` may be used.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_HANDLE,
    CMD_INIT,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_FLAG_READ,
    SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes

from aktin_sftp.crypto import Writer

try:
    from paramiko.sftp import int64
except ImportError:  # paramiko before 3.0 (Debian 12, Ubuntu 22.04) calls it long
    from paramiko.py3compat import long as int64  # type: ignore[no-redef]

# SSH_FXF_WRITE | SSH_FXF_CREAT | SSH_FXF_TRUNC, as in open(..., "wb").
_OPEN_FOR_WRITING = 0x02 | 0x08 | 0x10
# Writes in flight at once: enough to fill a long, fast link; the SSH channel window bounds it too.
WINDOW = 64
POSIX_RENAME = "posix-rename@openssh.com"
# A download's reads: of the size every SFTP server answers in full, this many in flight at once
# (2 MiB, enough to keep a long, fast link busy).
READ_SIZE = 1 << 15
READS = 64


class _Replies:
    """Collects the replies paramiko hands to the object a request was sent for, whatever order
    they arrive in (paramiko would drop those sent for no object)."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, message: Message, number: int) -> None:
        self.got[number] = (kind, message)


class Client(paramiko.SFTPClient):
    extensions: dict[str, bytes]
    # Called for every packet the server sends on this channel (the watchdog's sign of life).
    progress: Callable[[], None] | None = None

    if TYPE_CHECKING:  # paramiko's internals that this class builds on, which its stubs leave out
        def _send_packet(self, kind: int, message: Message) -> None: ...
        def _request(self, kind: int, *args: object) -> tuple[int, Message]: ...
        def _async_request(self, receiver: object, kind: int, *args: object) -> int: ...
        def _read_response(self, waitfor: int | None = None) -> tuple[int | None, Message | None]: ...
        def _convert_status(self, message: Message) -> None: ...

    def _read_packet(self) -> tuple[int, bytes]:
        # paramiko's stubs leave this internal out.
        packet: tuple[int, bytes] = super()._read_packet()  # type: ignore[misc]
        if self.progress is not None:
            self.progress()
        return packet

    def _send_version(self) -> int:
        message = Message()
        message.add_int(3)
        self._send_packet(CMD_INIT, message)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        reply = Message(data)
        version: int = reply.get_int()
        self.extensions = {}
        while reply.get_remainder():
            name = reply.get_text()
            self.extensions[name] = reply.get_binary()
        return version

    def announces(self, extension: str) -> bool:
        return extension in self.extensions

    def write_file(self, path: str, chunks: Iterable[bytes], sent: Callable[[int], None] | None = None) -> int:
        """Creates or truncates `path` and writes `chunks` (each at most one write request) to it,
        then closes it. Raises OSError if the server refused any write or the close."""
        kind, message = self._request(CMD_OPEN, path, _OPEN_FOR_WRITING, SFTPAttributes())
        if kind != CMD_HANDLE:
            raise SFTPError("Expected handle")
        handle = message.get_binary()
        replies = _Replies()
        pending: deque[int] = deque()
        offset = 0
        try:
            for chunk in chunks:
                pending.append(self._async_request(replies, CMD_WRITE, handle, int64(offset), chunk))
                offset += len(chunk)
                while len(pending) > WINDOW:
                    self._check(replies, pending.popleft())
                if sent:
                    sent(offset)
        finally:
            # Sent right behind the writes: the server handles requests in order, so the close
            # waits for them, and all their replies come back in one round trip.
            pending.append(self._async_request(replies, CMD_CLOSE, handle))
            failure: BaseException | None = None
            while pending:
                try:
                    self._check(replies, pending.popleft())
                except OSError as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
        return offset

    def _check(self, replies: _Replies, number: int) -> None:
        kind, message = self._reply(replies, number)
        if kind != CMD_STATUS:
            raise SFTPError("Expected status")
        self._convert_status(message)

    def _reply(self, replies: _Replies, number: int) -> tuple[int, Message]:
        while number not in replies.got:
            self._read_response()
        return replies.got.pop(number)

    def read_file(self, path: str, local: Writer, most: int) -> None:
        """Writes at most `most` bytes of `path` to `local`, and asks the server for no more.
        Raises OSError for what the server refuses (FileNotFoundError, PermissionError, ...)."""
        kind, message = self._request(CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())
        if kind != CMD_HANDLE:
            raise SFTPError("Expected handle")
        handle = message.get_binary()
        try:
            self._read(handle, local, most)
        finally:
            # Answered after every read still in flight: the channel is clear for the next file.
            self._request(CMD_CLOSE, handle)

    def _read(self, handle: bytes, local: Writer, most: int) -> None:
        """Up to READS reads in flight, their data written in order."""
        replies = _Replies()
        pending: deque[tuple[int, int]] = deque()
        asked = done = 0
        while True:
            while len(pending) < READS and asked < most:
                length = min(READ_SIZE, most - asked)
                pending.append((self._ask(replies, handle, asked, length), length))
                asked += length
            if not pending:
                return
            number, length = pending.popleft()
            kind, message = self._reply(replies, number)
            if kind == CMD_STATUS:
                try:
                    self._convert_status(message)
                except EOFError:  # the server's way of saying the file ends here
                    return
            if kind != CMD_DATA:
                raise SFTPError("Expected data")
            data = message.get_binary()
            if len(data) > length:
                # Not the file as it is: a server that broke the protocol. Its replies still
                # arrive one per request, so the connection serves the next file.
                raise OSError(errno.EPROTO, f"the server answered a read of {length} bytes with {len(data)}")
            local.write(data)
            done += len(data)
            if not data:
                return
            if len(data) < length:
                # The file's end, or a server that sends less than asked for: the rest of this
                # read is asked for once more, ahead of those in flight behind it, which stay as
                # large as they were (made smaller, they would all be answered as sparingly).
                # At the file's end the close, sent after them, takes in their replies.
                pending.appendleft((self._ask(replies, handle, done, length - len(data)), length - len(data)))

    def _ask(self, replies: _Replies, handle: bytes, offset: int, length: int) -> int:
        return self._async_request(replies, CMD_READ, handle, int64(offset), length)


def open_client(transport: paramiko.Transport) -> Client:
    client: Any = Client.from_transport(transport)
    if client is None:
        raise paramiko.SSHException("the server refused the SFTP subsystem")
    return client  # type: ignore[no-any-return]

