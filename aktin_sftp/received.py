"""The recipient's state: which version of each request `receive` took in, and which files keep
differing from what the sender's status.xml says. One JSON file, replaced atomically."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aktin_sftp.errors import SyncError
from aktin_sftp.files import write_atomic


@dataclass
class Received:
    id: int
    # Of the token, as the sender's status.xml vouched for it.
    sha256: str
    key_id: str
    at: str
    withdrawn: str | None = None


@dataclass
class Mismatch:
    """A file that did not match status.xml, and in how many runs in a row."""

    sha256: str
    runs: int


@dataclass
class Inbox:
    received: dict[int, Received] = field(default_factory=dict)
    mismatches: dict[int, Mismatch] = field(default_factory=dict)
    # Requests withdrawn before they were received, with the time of the withdrawal reported.
    withdrawn_unreceived: dict[int, str] = field(default_factory=dict)


class Damaged(SyncError):
    def __init__(self, source: str, problem: str) -> None:
        super().__init__(
            f"{source}: {problem}; restore it from a backup, or move it away to receive every request once more "
            "(what is in the inbox already stays as it is)"
        )


def parse(data: bytes, source: str) -> Inbox:
    try:
        raw = json.loads(data)
        received = {int(i): Received(**fields) for i, fields in raw["received"].items()}
        mismatches = {int(i): Mismatch(**fields) for i, fields in raw["mismatches"].items()}
        # Absent from the files of the versions before it was recorded.
        withdrawn_unreceived = {int(i): deleted for i, deleted in raw.get("withdrawn_unreceived", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Damaged(source, f"not a state receive wrote ({type(exc).__name__})") from None
    # JSON gives any type for any field; a wrong one would fail later, in the middle of a run.
    for request_id, taken in received.items():
        if taken.id != request_id or not _sha256(taken.sha256) or not isinstance(taken.key_id, str) or not isinstance(
            taken.at, str
        ) or not isinstance(taken.withdrawn, (str, type(None))):
            raise Damaged(source, f"its record of request {request_id} cannot be one receive wrote")
    for request_id, mismatch in mismatches.items():
        if not _sha256(mismatch.sha256) or type(mismatch.runs) is not int or mismatch.runs < 1:
            raise Damaged(source, f"its count of mismatches of request {request_id} cannot be one receive wrote")
    for request_id, deleted in withdrawn_unreceived.items():
        if not isinstance(deleted, str):
            raise Damaged(source, f"its record of the withdrawal of request {request_id} cannot be one receive wrote")
    return Inbox(received, mismatches, withdrawn_unreceived)


def _sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def serialize(inbox: Inbox) -> bytes:
    return json.dumps(
        {
            "received": {str(i): asdict(r) for i, r in sorted(inbox.received.items())},
            "mismatches": {str(i): asdict(m) for i, m in sorted(inbox.mismatches.items())},
            "withdrawn_unreceived": {str(i): deleted for i, deleted in sorted(inbox.withdrawn_unreceived.items())},
        },
        indent=1,
    ).encode() + b"\n"


class InboxFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Inbox:
        try:
            return parse(self.path.read_bytes(), str(self.path))
        except FileNotFoundError:
            return Inbox()

    def save(self, inbox: Inbox) -> None:
        write_atomic(self.path, serialize(inbox))
