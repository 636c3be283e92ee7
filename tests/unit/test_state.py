"""The status XML: what recipients and the upstream uploader already know must survive."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from aktin_sftp.errors import SyncError
from aktin_sftp.state import Copy, Entry, StatusFile, parse

COPY = Copy("0123456789abcdef", "aktin@sftp.example.org:22:upload", 4242, "ab" * 32)

# Written by upstream's sftp_export.py (ElementTree, utf-8, no declaration, no indentation).
UPSTREAM = (
    b"<status><request-status><id>2</id><completion>0.5</completion><uploaded>2024-05-02 10:00:00</uploaded>"
    b"<last-update>2024-05-03 10:00:00</last-update><deleted>2024-05-04 10:00:00</deleted></request-status>"
    b"<request-status><id>3</id><completion>1.0</completion><uploaded>2024-05-02 11:00:00</uploaded>"
    b"</request-status></status>"
)


def test_reads_an_upstream_file(tmp_path: Path) -> None:
    path = tmp_path / "status.xml"
    path.write_bytes(UPSTREAM)
    entries = StatusFile(path).load()
    assert entries[2] == Entry(2, "0.5", "2024-05-02 10:00:00", "2024-05-03 10:00:00", "2024-05-04 10:00:00")
    assert entries[3] == Entry(3, "1.0", "2024-05-02 11:00:00")


def test_round_trip_keeps_every_field_and_unknown_elements(tmp_path: Path) -> None:
    path = tmp_path / "status.xml"
    path.write_bytes(UPSTREAM.replace(b"<id>3</id>", b"<id>3</id><note>kept</note>"))
    store = StatusFile(path)
    entries = store.load()
    entries[3].delivered("1.0", "abc", "2026-11-28 07:00:00", COPY)
    store.save(entries)
    again = store.load()
    assert again[2] == entries[2]
    assert again[3].last_update == "2026-11-28 07:00:00"
    assert again[3].uploaded == "2024-05-02 11:00:00"
    assert again[3].fingerprint == "abc"
    assert again[3].copy == COPY
    assert [e.tag for e in again[3].extra] == ["note"]


def test_written_file_reads_like_upstream_for_a_recipient(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    entry = Entry(5, "0.33")
    entry.delivered("0.33", "fp", "2026-11-28 07:00:00", COPY)
    store.save({5: entry})
    data = store.path.read_bytes()
    assert not data.startswith(b"<?xml")
    root = ET.fromstring(data)
    element = root.find("request-status")
    assert element is not None
    assert [c.tag for c in element][:3] == ["id", "completion", "uploaded"]
    assert element.findtext("completion") == "0.33"
    assert element.find("last-update") is None and element.find("deleted") is None
    # Which key opens the file, for the recipient in the middle of a key change.
    assert element.findtext("key-id") == "0123456789abcdef"
    assert (element.findtext("size"), element.findtext("sha256")) == ("4242", "ab" * 32)


def test_redelivery_after_deletion_clears_deleted_and_keeps_first_upload() -> None:
    entry = Entry(1, "1.0", uploaded="2024-01-01 00:00:00", deleted="2024-02-01 00:00:00")
    entry.redeliver = "2026-11-28 06:00:00"
    entry.delivered("0.5", "fp", "2026-11-28 07:00:00", COPY)
    assert entry.redeliver is None
    assert (entry.uploaded, entry.last_update, entry.deleted) == ("2024-01-01 00:00:00", "2026-11-28 07:00:00", None)


def test_missing_file_means_nothing_delivered_yet(tmp_path: Path) -> None:
    assert StatusFile(tmp_path / "status.xml").load() == {}


@pytest.mark.parametrize(
    "data",
    [UPSTREAM[:50], b"", b"<other/>", b"<status><request-status><id>x</id></request-status></status>",
     b'<!DOCTYPE status [<!ENTITY a "b">]><status/>'],
)
def test_a_damaged_file_stops_the_run_instead_of_reading_as_empty(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "status.xml"
    path.write_bytes(data)
    with pytest.raises(SyncError, match=str(path)):
        StatusFile(path).load()


def test_save_is_private_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.xml"]
    assert store.path.stat().st_mode & 0o077 == 0


def test_damage_is_recovered_from_the_previous_save(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    store.save({1: Entry(1, "1.0"), 2: Entry(2, "0.5")})
    store.path.write_bytes(b"<status><request-sta")
    assert sorted(store.load()) == [1]
    assert f"{store.path}: status XML is unreadable" in caplog.text
    assert f"using the previous good copy {store.previous} instead" in caplog.text
    # Nothing contradictory: the run goes on, so it does not claim that it stopped.
    assert "nothing was changed" not in caplog.text and "run again" not in caplog.text
    store.path.unlink()
    assert sorted(store.load()) == [1]


def test_an_unchanged_state_is_not_rewritten_and_prev_keeps_the_copy_before_the_last_change(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    store.save({1: Entry(1, "1.0"), 2: Entry(2, "0.5")})
    before = store.previous.read_bytes()
    store.save({1: Entry(1, "1.0"), 2: Entry(2, "0.5")})
    assert store.previous.read_bytes() == before
    assert sorted(parse(before, "prev")) == [1]


def test_a_state_recovered_from_prev_is_written_back(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    store.save({1: Entry(1, "1.0"), 2: Entry(2, "0.5")})
    store.path.write_bytes(b"<status><request-sta")
    store.save(store.load())
    assert sorted(parse(store.path.read_bytes(), "status.xml")) == [1]


def test_the_good_copy_survives_the_save_after_a_recovery(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    store.save({1: Entry(1, "1.0"), 2: Entry(2, "0.5")})
    good = store.previous.read_bytes()
    store.path.write_bytes(b"<status><request-sta")
    recovered = StatusFile(tmp_path / "status.xml")
    entries = recovered.load()
    entries[3] = Entry(3, "1.0")
    recovered.save(entries)
    assert store.previous.read_bytes() == good
    assert sorted(parse(store.path.read_bytes(), "status.xml")) == [1, 3]
    entries[4] = Entry(4, "1.0")
    recovered.save(entries)
    assert sorted(parse(store.previous.read_bytes(), "prev")) == [1, 3]


@pytest.mark.parametrize("text", ["²", "1.5", "-1", "", "9" * 19])
def test_an_id_that_is_no_plain_integer_is_refused(text: str) -> None:
    with pytest.raises(SyncError, match="not an integer"):
        parse(f"<status><request-status><id>{text}</id></request-status></status>".encode(), "status.xml")


def test_damage_in_both_copies_stops(tmp_path: Path) -> None:
    store = StatusFile(tmp_path / "status.xml")
    store.save({1: Entry(1, "1.0")})
    store.save({1: Entry(1, "1.0")})
    store.path.write_bytes(b"")
    store.previous.write_bytes(b"garbage")
    with pytest.raises(SyncError, match=r"status\.xml\.prev: status XML is unreadable"):
        store.load()
