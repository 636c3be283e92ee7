"""What `receive` decides from status.xml and its own state alone, and that state's file."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from paramiko.message import Message
from paramiko.sftp import CMD_CLOSE, CMD_DATA, CMD_HANDLE, CMD_OPEN, CMD_READ, CMD_STATUS, SFTP_EOF, SFTP_OK

from aktin_sftp.errors import EX_CONFIG, EX_IOERR, SyncError
from aktin_sftp.receive import Differs, SftpFolder, Unreadable, due
from aktin_sftp.received import Damaged, Inbox, InboxFile, Mismatch, Received, parse, serialize
from aktin_sftp.state import Copy, Entry
from aktin_sftp.transfer import READ_SIZE, READS, Client

OLD, NEW = "aa" * 32, "bb" * 32
KEY_ID = "0123456789abcdef"
DELETED_AT = "2026-01-02 03:04:05"


def copy(sha256: str) -> Copy:
    return Copy(KEY_ID, "aktin@sftp.example.org:22:upload", 1000, sha256)


# What status.xml says of one request, what was taken in of it before, and what a run must do:
# every combination of deleted or not, vouched for (and with which sha256) or not, and never
# received, received, and reported withdrawn or not.
CASES = [
    # deleted, status.xml's sha256, received sha256, reported withdrawn (at DELETED_AT), expected
    (False, NEW, None, False, "fetch"),
    (False, NEW, OLD, False, "fetch"),
    (False, OLD, OLD, False, "nothing"),
    # Withdrawn once, then delivered again by the sender (a new token, so a new sha256).
    (False, NEW, OLD, True, "fetch"),
    (False, OLD, OLD, True, "nothing"),
    # Listed by an upstream uploader, without size and sha256: nothing vouches for it.
    (False, None, None, False, "unvouched"),
    (False, None, OLD, False, "unvouched"),
    (False, None, OLD, True, "unvouched"),
    # Withdrawn before it was received: reported once, too.
    (True, NEW, None, False, "withdrawn"),
    (True, NEW, None, True, "nothing"),
    (True, NEW, OLD, False, "withdrawn"),
    (True, OLD, OLD, False, "withdrawn"),
    (True, OLD, OLD, True, "nothing"),
    (True, NEW, OLD, True, "nothing"),
    (True, None, None, False, "withdrawn"),
    (True, None, None, True, "nothing"),
    (True, None, OLD, False, "withdrawn"),
    (True, None, OLD, True, "nothing"),
]


@pytest.mark.parametrize(("deleted", "vouched", "taken", "withdrawn", "expected"), CASES)
def test_due_decides_from_status_xml_and_what_was_taken_in(
    deleted: bool, vouched: str | None, taken: str | None, withdrawn: bool, expected: str
) -> None:
    entry = Entry(7, "1.0", deleted=DELETED_AT if deleted else None, copy=copy(vouched) if vouched else None)
    inbox = Inbox()
    if taken is not None:
        inbox.received[7] = Received(7, taken, KEY_ID, "2026-01-01 00:00:00", DELETED_AT if withdrawn else None)
    elif withdrawn:
        inbox.withdrawn_unreceived[7] = DELETED_AT
    plan = due({7: entry}, inbox)
    got = {"fetch": [e.id for e in plan.fetch], "withdrawn": [e.id for e in plan.withdrawn], "unvouched": plan.unvouched}
    assert got == {k: [7] if k == expected else [] for k in ("fetch", "withdrawn", "unvouched")}


def test_a_request_withdrawn_again_before_it_was_received_is_reported_again() -> None:
    """Delivered again and withdrawn once more, each time before this recipient took it in."""
    entry = Entry(7, "1.0", deleted="2026-03-04 05:06:07", copy=copy(NEW))
    assert [e.id for e in due({7: entry}, Inbox(withdrawn_unreceived={7: DELETED_AT})).withdrawn] == [7]


def test_due_goes_by_id_and_leaves_the_state_as_it_is() -> None:
    entries = {i: Entry(i, "1.0", copy=copy(NEW)) for i in (30, 4, 17)}
    entries[9] = Entry(9, "1.0", deleted=DELETED_AT, copy=copy(OLD))
    inbox = Inbox({9: Received(9, OLD, KEY_ID, "2026-01-01 00:00:00"), 17: Received(17, OLD, KEY_ID, "2026-01-01 00:00:00")})
    before = serialize(inbox)
    plan = due(entries, inbox)
    assert [e.id for e in plan.fetch] == [4, 17, 30]
    assert [e.id for e in plan.withdrawn] == [9]
    assert serialize(inbox) == before


def test_the_state_survives_a_round_trip(tmp_path: Path) -> None:
    inbox = Inbox(
        {
            3: Received(3, OLD, KEY_ID, "2026-01-01 00:00:00"),
            12: Received(12, NEW, "fedcba9876543210", "2026-01-02 00:00:00", DELETED_AT),
        },
        {5: Mismatch(NEW, 2)},
        {8: DELETED_AT},
    )
    assert parse(serialize(inbox), "received.json") == inbox
    store = InboxFile(tmp_path / "received.json")
    assert store.load() == Inbox()
    store.save(inbox)
    assert store.load() == inbox
    assert (tmp_path / "received.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["received.json"]


GOOD = {"id": 3, "sha256": OLD, "key_id": KEY_ID, "at": "2026-01-01 00:00:00", "withdrawn": None}


def test_a_state_written_before_withdrawals_were_recorded_is_read() -> None:
    data = json.dumps({"received": {"3": GOOD}, "mismatches": {}}).encode()
    assert parse(data, "received.json") == Inbox({3: Received(3, OLD, KEY_ID, "2026-01-01 00:00:00")})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{\"received\": {",
        b"\xff\xfe not utf-8",
        b"[]",
        b"{}",
        json.dumps({"received": {}}).encode(),
        json.dumps({"received": [], "mismatches": {}}).encode(),
        json.dumps({"received": {"x": GOOD}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "extra": 1}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {k: v for k, v in GOOD.items() if k != "at"}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "sha256": "not a sha256"}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "sha256": 5}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "key_id": None}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "withdrawn": 1}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": {**GOOD, "id": 4}}, "mismatches": {}}).encode(),
        json.dumps({"received": {"3": GOOD}, "mismatches": {"5": {"sha256": NEW, "runs": "2"}}}).encode(),
        json.dumps({"received": {"3": GOOD}, "mismatches": {"5": {"sha256": NEW, "runs": 0}}}).encode(),
        json.dumps({"received": {"3": GOOD}, "mismatches": {"5": {"sha256": None, "runs": 1}}}).encode(),
        json.dumps({"received": {"3": GOOD}, "mismatches": {"5": [NEW, 1]}}).encode(),
        json.dumps({"received": {}, "mismatches": {}, "withdrawn_unreceived": {"5": None}}).encode(),
        json.dumps({"received": {}, "mismatches": {}, "withdrawn_unreceived": {"x": DELETED_AT}}).encode(),
        json.dumps({"received": {}, "mismatches": {}, "withdrawn_unreceived": [5]}).encode(),
    ],
    ids=[
        "empty", "cut-short", "not-utf8", "a-list", "no-keys", "no-mismatches", "received-a-list", "id-not-a-number",
        "unknown-field", "missing-field", "bad-sha256", "sha256-a-number", "key-id-null", "withdrawn-a-number",
        "id-differs-from-key", "runs-a-string", "runs-zero", "mismatch-sha256-null", "mismatch-a-list",
        "withdrawal-time-null", "withdrawal-id-not-a-number", "withdrawals-a-list",
    ],
)
def test_a_damaged_state_is_one_clear_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "received.json"
    path.write_bytes(data)
    with pytest.raises(Damaged) as raised:
        InboxFile(path).load()
    assert isinstance(raised.value, SyncError)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "move it away" in message


class FakeSftpServer(Client):
    """paramiko's own request and reply bookkeeping, against an in-memory file: `answer` says how
    many bytes a READ at an offset gets (None: what is there, as a server answers in full)."""

    def __init__(self, content: bytes, answer: Callable[[int, int], int | None] = lambda offset, length: None) -> None:
        # paramiko's SFTPClient.__init__ wants a channel; these are what its request code uses.
        self._lock = threading.Lock()
        self._expecting: dict[int, object] = {}
        self.request_number = 1
        self.ultra_debug = False
        self.logger = logging.getLogger("fake-sftp")
        self.content = content
        self.answer = answer
        self.reads: list[tuple[int, int]] = []
        self.outbox: deque[tuple[int, bytes]] = deque()
        self.closed = False

    def _send_packet(self, kind: int, message: Message) -> None:
        request = Message(message.asbytes())
        number = request.get_int()
        reply = Message()
        reply.add_int(number)
        if kind == CMD_OPEN:
            reply.add_string(b"handle")
            self.outbox.append((CMD_HANDLE, reply.asbytes()))
            return
        if kind == CMD_CLOSE:
            self.closed = True
            reply.add_int(SFTP_OK)
            reply.add_string("")
            self.outbox.append((CMD_STATUS, reply.asbytes()))
            return
        assert kind == CMD_READ
        request.get_binary()
        offset, length = request.get_int64(), request.get_int()
        self.reads.append((offset, length))
        # An endless download would not end this test either.
        assert len(self.reads) < 10_000, "endless reads"
        if offset >= len(self.content):
            reply.add_int(SFTP_EOF)
            reply.add_string("End of file")
            self.outbox.append((CMD_STATUS, reply.asbytes()))
            return
        count = self.answer(offset, length)
        reply.add_string(self.content[offset:offset + (length if count is None else count)])
        self.outbox.append((CMD_DATA, reply.asbytes()))

    def _read_packet(self) -> tuple[int, bytes]:
        assert self.outbox, "waits for a reply the server never sends"
        return self.outbox.popleft()


def download(server: FakeSftpServer, most: int) -> bytes:
    got = io.BytesIO()
    server.closed = False
    server.read_file("/upload/export_1.zip", got, most)
    return got.getvalue()


def test_one_short_read_does_not_make_the_rest_of_the_download_endless() -> None:
    content = os.urandom(1 << 20)
    # The third read of the file gets a single byte; every other one what it asked for.
    server = FakeSftpServer(content, lambda offset, length: 1 if offset == 2 * READ_SIZE else None)
    assert download(server, len(content) + 1) == content
    assert len(server.reads) <= (len(content) + 1) // READ_SIZE + 2 * READS


def test_a_reply_longer_than_the_read_asked_for_is_refused() -> None:
    server = FakeSftpServer(os.urandom(4 * READ_SIZE), lambda offset, length: length + 1)
    with pytest.raises(OSError, match=f"answered a read of {READ_SIZE} bytes with {READ_SIZE + 1}"):
        download(server, 4 * READ_SIZE + 1)


def test_a_server_that_answers_every_read_short_gives_the_whole_file() -> None:
    content = os.urandom(5 * READ_SIZE + 7)
    server = FakeSftpServer(content, lambda offset, length: min(length, 10_000))
    assert download(server, len(content) + 1) == content


def test_reads_in_flight_past_the_end_are_answered_before_the_next_file() -> None:
    """As for status.xml, read with room for far more than it holds."""
    first, second = os.urandom(1000), os.urandom(3000)
    server = FakeSftpServer(first)
    assert download(server, 10 << 20) == first
    assert server.closed and not server.outbox
    server.content = second
    assert download(server, 10 << 20) == second


class RefusingRemote:
    """A server that answers the download with a plain failure, as OpenSSH's does for most errors."""

    def __init__(self, error: OSError, listed: list[str]) -> None:
        self.error = error
        self.listed = listed

    def download(self, name: str, local: object, most: int) -> None:
        raise self.error

    def listing(self) -> dict[str, int]:
        return dict.fromkeys(self.listed, 1000)


@pytest.mark.parametrize(
    ("error", "listed", "expected"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), ["export_1.zip"], ("permission denied", EX_CONFIG)),
        (OSError("Failure"), ["export_1.zip"], ("Failure", EX_IOERR)),
        # Some servers answer "no such file" that way too: the folder tells which it was.
        (OSError("Failure"), [], None),
        (FileNotFoundError(errno.ENOENT, "No such file"), ["export_1.zip"], None),
    ],
    ids=["permission", "other-failure", "gone-failure", "gone"],
)
def test_what_an_sftp_server_refuses_is_told_apart(
    error: OSError, listed: list[str], expected: tuple[str, int] | None
) -> None:
    folder = SftpFolder(RefusingRemote(error, listed))  # type: ignore[arg-type]
    if expected is None:
        with pytest.raises(Differs, match="is missing"):
            folder.download("export_1.zip", io.BytesIO(), 1001)
        return
    with pytest.raises(Unreadable) as raised:
        folder.download("export_1.zip", io.BytesIO(), 1001)
    assert (str(raised.value), raised.value.exit_code) == expected
