"""The journal catalog (journalctl -x): one entry for every MESSAGE_ID the service logs, as
systemd's own journalctl reads it, and the events that carry those ids."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aktin_sftp import cli, events, sync
from aktin_sftp.broker import RequestFailed
from aktin_sftp.errors import LockedError, UnavailableError
from aktin_sftp.plan import Plan, Reason, Target
from aktin_sftp.state import Copy, Entry

CATALOG = Path(__file__).resolve().parent.parent.parent / "systemd" / "aktin-broker-sftp.catalog"
IDS = {name: value for name, value in vars(events).items() if name.isupper()}


def test_journalctl_reads_one_entry_for_every_message_id(tmp_path: Path) -> None:
    journalctl = shutil.which("journalctl")
    assert journalctl, "journalctl (systemd) is part of every target system"
    (tmp_path / "usr/lib/systemd/catalog").mkdir(parents=True)
    (tmp_path / "var/lib/systemd").mkdir(parents=True)
    shutil.copy(CATALOG, tmp_path / "usr/lib/systemd/catalog")
    subprocess.run([journalctl, f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run([journalctl, f"--root={tmp_path}", "--list-catalog"], check=True, capture_output=True, text=True)
    subjects = dict(line.split(" ", 1) for line in listed.stdout.splitlines())
    assert sorted(subjects) == sorted(IDS.values())
    assert all(subject.startswith("aktin-broker-sftp: ") for subject in subjects.values())


def test_every_entry_says_what_happened_and_then_what_to_do() -> None:
    entries = re.split(r"^-- ([0-9a-f]{32})\n", CATALOG.read_text(), flags=re.MULTILINE)[1:]
    texts = dict(zip(entries[::2], entries[1::2], strict=True))
    assert sorted(texts) == sorted(IDS.values())
    for message_id, text in texts.items():
        header, *paragraphs = text.strip().split("\n\n")
        fields = {line.split(":", 1)[0] for line in header.splitlines()}
        assert fields == {"Subject", "Defined-By", "Documentation"}, message_id
        assert len(paragraphs) >= 2, f"{message_id}: what happened, then what to do"


def test_a_run_that_met_the_lock_is_not_counted_as_failed() -> None:
    assert cli.message_id(LockedError("another run holds it")) == events.LOCKED
    assert cli.message_id(UnavailableError("broker down")) == events.RUN_FAILED


class _Broker:
    def tagged_request_ids(self, tag: str) -> list[int]:
        return [4]

    def all_node_statuses(self, ids: list[int]) -> dict[int, RequestFailed]:
        return {4: RequestFailed("broker answered the status of request 4 with HTTP 500")}


def test_a_request_whose_status_could_not_be_read_is_journaled_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        observed, unreadable = sync.observe(_Broker(), "rki")  # type: ignore[arg-type]
    assert observed == {} and list(unreadable) == [4]
    assert [(getattr(r, "MESSAGE_ID", None), getattr(r, "REQUEST_ID", None)) for r in caplog.records] == [
        (events.STATUS_UNREADABLE, 4)
    ]


@pytest.mark.parametrize(
    ("reason", "message_id"), [(Reason.KEY_CHANGED, events.KEY_CHANGED), (Reason.MOVED, events.DESTINATION_CHANGED)]
)
def test_a_key_or_destination_change_is_journaled_once_with_its_own_id(
    reason: Reason, message_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    entries = {i: Entry(i, "1.0", copy=Copy("old-key", "aktin@old:22:in", 10, "0" * 64)) for i in (1, 2)}
    with caplog.at_level(logging.WARNING):
        sync._announce_moves(Plan(((1, reason), (2, reason)), (), ()), entries, Target("new-key", "aktin@new:22:in"))
    assert [getattr(r, "MESSAGE_ID", None) for r in caplog.records] == [message_id]
    assert "2 delivered files are delivered again" in caplog.records[0].getMessage()
