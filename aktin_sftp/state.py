"""The status XML: what was delivered, in the format the upstream uploader wrote and recipients read.

Upstream's elements (`id`, `completion`, `uploaded`, `last-update`, `deleted`) keep their names and
meaning. Ours: `fingerprint` records exactly which node results the delivered file holds;
`key-id`, `destination`, `size` and `sha256` say which key encrypted the file, where it went and
what was uploaded (for recipients and for `verify`); `redeliver` queues a request for the next
run. Elements we do not know are kept as they are.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aktin_sftp import xmlsafe
from aktin_sftp.errors import SyncError
from aktin_sftp.files import write_atomic

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
KNOWN = (
    "id", "completion", "uploaded", "last-update", "deleted", "fingerprint",
    "key-id", "destination", "size", "sha256", "redeliver",
)


def now() -> str:
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


@dataclass(frozen=True)
class Copy:
    """One uploaded file: which key encrypted it, where it went, and what arrived there."""

    key_id: str
    destination: str
    size: int
    sha256: str


@dataclass
class Entry:
    id: int
    completion: str
    uploaded: str | None = None
    last_update: str | None = None
    deleted: str | None = None
    fingerprint: str | None = None
    copy: Copy | None = None
    # When an operator asked for the request to be delivered once more (`redeliver`, `verify --repair`).
    redeliver: str | None = None
    extra: list[ET.Element] = field(default_factory=list)

    def delivered(self, completion: str, fingerprint: str, at: str, copy: Copy) -> None:
        if self.uploaded is None:
            self.uploaded = at
        else:
            self.last_update = at
        self.completion = completion
        self.fingerprint = fingerprint
        self.copy = copy
        self.deleted = None
        self.redeliver = None

    def removed(self, at: str) -> None:
        self.deleted = at
        self.redeliver = None


class StatusFile:
    """The file plus its previous good version (`.prev`), to recover from outside damage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous = path.with_name(f"{path.name}.prev")
        # Set while the file on disk is damaged and `.prev` holds the good copy: the next save
        # must not rotate the damaged file into `.prev`.
        self.recovered = False

    def load(self) -> dict[int, Entry]:
        try:
            return parse(self.path.read_bytes(), str(self.path))
        except FileNotFoundError:
            if not self.previous.exists():
                return {}
            problem = f"{self.path} is missing"
        except Damaged as exc:
            if not self.previous.exists():
                raise
            problem = exc.problem
        entries = parse(self.previous.read_bytes(), str(self.previous))
        self.recovered = True
        log.warning(
            "%s; using the previous good copy %s instead (one save older: at most the latest "
            "delivery is repeated), and the next save replaces the damaged file", problem, self.previous,
        )
        return entries

    def save(self, entries: dict[int, Entry]) -> None:
        data = serialize(entries)
        # An unchanged state is not written again: a run that changed nothing then writes
        # nothing, and `.prev` keeps the copy from before the last real change.
        if self.recovered:
            write_atomic(self.path, data)
            self.recovered = False
        elif self._current() != data:
            write_atomic(self.path, data, previous=self.previous)

    def _current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None


class Damaged(SyncError):
    """A status XML that cannot be used; `problem` says why without advice on what to do."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(
            f"{source}: {problem}; nothing was changed. Restore it from the status.xml in the SFTP "
            "folder (or a backup) and run again"
        )
        self.problem = f"{source}: {problem}"


def parse(data: bytes, source: str) -> dict[int, Entry]:
    try:
        root = xmlsafe.parse(data)
    except xmlsafe.DoctypeRefused:
        raise Damaged(source, "has a DOCTYPE declaration, which a status XML never has") from None
    except ET.ParseError as exc:
        raise Damaged(source, f"status XML is unreadable ({exc})") from None
    if root.tag != "status":
        raise Damaged(source, f"root element is <{root.tag}>, not <status>")
    entries: dict[int, Entry] = {}
    for element in root.findall("request-status"):
        text = (element.findtext("id") or "").strip()
        if not re.fullmatch(r"[0-9]{1,18}", text):
            raise Damaged(source, f"a request-status has the id {text[:40]!r}, not an integer")
        entry = Entry(
            id=int(text),
            completion=(element.findtext("completion") or "0.0").strip(),
            uploaded=_text(element, "uploaded"),
            last_update=_text(element, "last-update"),
            deleted=_text(element, "deleted"),
            fingerprint=_text(element, "fingerprint"),
            copy=_copy(element, source, text),
            redeliver=_text(element, "redeliver"),
            extra=[child for child in element if child.tag not in KNOWN],
        )
        entries[entry.id] = entry
    return entries


def serialize(entries: dict[int, Entry]) -> bytes:
    root = ET.Element("status")
    for entry in sorted(entries.values(), key=lambda e: e.id):
        element = ET.SubElement(root, "request-status")
        values = (
            ("id", str(entry.id)),
            ("completion", entry.completion),
            ("uploaded", entry.uploaded),
            ("last-update", entry.last_update),
            ("deleted", entry.deleted),
            ("fingerprint", entry.fingerprint),
            ("key-id", entry.copy.key_id if entry.copy else None),
            ("destination", entry.copy.destination if entry.copy else None),
            ("size", str(entry.copy.size) if entry.copy else None),
            ("sha256", entry.copy.sha256 if entry.copy else None),
            ("redeliver", entry.redeliver),
        )
        for name, value in values:
            if value is not None:
                ET.SubElement(element, name).text = value
        element.extend(entry.extra)
    ET.indent(root)
    # Like upstream: no XML declaration.
    return ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n"


def _text(element: ET.Element, name: str) -> str | None:
    text = element.findtext(name)
    return text.strip() if text and text.strip() else None


def _copy(element: ET.Element, source: str, request_id: str) -> Copy | None:
    key_id, destination, size, sha256 = (_text(element, name) for name in ("key-id", "destination", "size", "sha256"))
    if key_id is None or destination is None or size is None or sha256 is None:
        # Written by upstream or by a version before these were recorded.
        return None
    if not size.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise Damaged(source, f"request {request_id} has a size {size[:40]!r} or sha256 {sha256[:70]!r} that cannot be")
    return Copy(key_id, destination, int(size), sha256)
