"""What `receive` decides from status.xml and its own state alone, and that state's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aktin_sftp.errors import SyncError
from aktin_sftp.receive import due
from aktin_sftp.received import Damaged, Inbox, InboxFile, Mismatch, Received, parse, serialize
from aktin_sftp.state import Copy, Entry

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
