"""`receive`: the recipient's side. Takes in exactly what the sender's status.xml vouches for:
every file is checked against its recorded size and SHA-256 before it is decrypted, with the key
its recorded key id names, and placed in the inbox as a zip under its final name only when whole.

Nothing is ever removed from the source. Plaintext is written only to the inbox (a temporary
name there, then renamed), mode 0600 in folders of mode 0700.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import lzma
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aktin_sftp import crypto, state
from aktin_sftp.config import ReceiveConfig
from aktin_sftp.crypto import Writer
from aktin_sftp.errors import EX_CONFIG, EX_DATAERR, ConfigError, SyncError, UnavailableError
from aktin_sftp.faults import checkpoint
from aktin_sftp.files import Hashing, open_private
from aktin_sftp.lock import exclusive
from aktin_sftp.received import Inbox, InboxFile, Mismatch, Received
from aktin_sftp.sftp import Remote
from aktin_sftp.state import Entry

log = logging.getLogger(__name__)

STATUS_NAME = "status.xml"
STATE_NAME = "received.json"
# A status.xml for tens of thousands of requests is a few MiB; more is no status.xml.
STATUS_LIMIT = 64 << 20
# Our own temporary names, the only ones a run removes: downloaded tokens in the state directory
# and unfinished plaintext in the inbox.
_TOKEN = re.compile(r"\.receive_[0-9]+\.fernet")
_UNFINISHED = re.compile(r"\.export_[0-9]+\.zip\.partial")
# As the sender writes them; anything else would end up in log lines unchecked.
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def result_name(request_id: int) -> str:
    return f"export_{request_id}.zip"


class Differs(Exception):
    """Found while reading a file: it is not the one listed a moment ago. The sender removed
    or replaced it meanwhile, or someone put something else under its name."""


class Source(Protocol):
    def where(self, name: str) -> str: ...

    def listing(self) -> dict[str, int]: ...

    def download(self, name: str, local: Writer) -> None:
        """Raises Differs when `name` is no regular file (anymore); so may `local.write`."""


class LocalFolder:
    """The sender's folder on this machine (the recipient's own SFTP upload directory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def listing(self) -> dict[str, int]:
        return {e.name: e.stat().st_size for e in os.scandir(self.folder) if e.is_file(follow_symlinks=False)}

    def download(self, name: str, local: Writer) -> None:
        # The folder is writable by the sender's login: what was a file when listed may be a
        # symbolic link to any file of this machine, or a FIFO that would block, by now.
        try:
            descriptor = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise Differs("is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Differs("is a symbolic link") from None
            raise
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise Differs("is not a regular file")
            while chunk := handle.read(1 << 20):
                local.write(chunk)


class SftpFolder:
    """The sender's folder on an SFTP server; every wait is bounded by [sftp] timeout."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def where(self, name: str) -> str:
        return self.remote.path(name)

    def listing(self) -> dict[str, int]:
        return self.remote.listing()

    def download(self, name: str, local: Writer) -> None:
        try:
            self.remote.download(name, local)
        except UnavailableError:
            raise
        except SyncError:
            # The server's "no such file" arrives as any other refusal; the folder tells which.
            if name not in self.remote.listing():
                raise Differs("is missing") from None
            raise


@dataclass
class Due:
    """What a run has to do, decided from status.xml and the recipient's state alone."""

    fetch: list[Entry] = field(default_factory=list)
    withdrawn: list[Entry] = field(default_factory=list)
    # Listed without size and SHA-256 (written by the upstream uploader): nothing vouches for them.
    unvouched: list[int] = field(default_factory=list)


def due(entries: Mapping[int, Entry], inbox: Inbox) -> Due:
    plan = Due()
    for entry in sorted(entries.values(), key=lambda e: e.id):
        taken = inbox.received.get(entry.id)
        if entry.deleted is not None:
            if taken is not None and taken.withdrawn is None:
                plan.withdrawn.append(entry)
        elif entry.copy is None:
            plan.unvouched.append(entry.id)
        elif taken is None or taken.sha256 != entry.copy.sha256:
            plan.fetch.append(entry)
    return plan


class DataError(SyncError):
    exit_code = EX_DATAERR


class Unfinished(SyncError):
    """A run that refused a file for a reason the next run alone will not cure."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Refused(Exception):
    """A file not taken in; `exit_code` 0 while it may still be the sender replacing it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Summary:
    received: int = 0
    withdrawn: int = 0
    refused: int = 0
    unchanged: int = 0
    exit_code: int = 0

    def line(self, inbox: Path) -> str:
        return (
            f"receive: {self.received} received, {self.withdrawn} withdrawn, {self.refused} refused, "
            f"{self.unchanged} unchanged (inbox {inbox})"
        )


def receive(config: ReceiveConfig, dry_run: bool = False, show: Callable[[str], None] = print) -> Summary:
    keys = {crypto.key_id(key): key for key in (crypto.load_key(path) for path in config.key_files)}
    _private_folder(config.state_dir, "[state] directory")
    with exclusive(config.state_dir / "lock"), _source(config) as source:
        store = InboxFile(config.state_dir / STATE_NAME)
        inbox = store.load()
        entries, listing = _status(source)
        plan = due(entries, inbox)
        summary = Summary(unchanged=len(entries) - len(plan.fetch) - len(plan.withdrawn) - len(plan.unvouched))
        for request_id in plan.unvouched:
            log.warning("request %s: %s lists no size and SHA-256 for it (an upstream uploader's): not taken in",
                        request_id, source.where(STATUS_NAME))
        if dry_run:
            for entry in plan.fetch:
                show(f"would receive request {entry.id} ({'changed' if entry.id in inbox.received else 'new'})")
            for entry in plan.withdrawn:
                show(f"would report request {entry.id} as withdrawn")
            show(f"receive --dry-run: {len(plan.fetch)} to receive, {len(plan.withdrawn)} withdrawn, "
                 f"{summary.unchanged} unchanged; nothing was changed")
            return summary
        _drop_leftovers(config)
        for entry in plan.withdrawn:
            _withdraw(config, entry, inbox)
            store.save(inbox)
            summary.withdrawn += 1
        for entry in plan.fetch:
            try:
                _take_in(config, source, listing, entry, keys, inbox)
                summary.received += 1
            except Refused as refusal:
                log.log(logging.ERROR if refusal.exit_code else logging.WARNING, "request %s: %s", entry.id, refusal)
                summary.refused += 1
                summary.exit_code = max(summary.exit_code, refusal.exit_code)
            store.save(inbox)
            checkpoint("receive:recorded")
    if summary.exit_code:
        raise Unfinished(summary.line(config.inbox), summary.exit_code)
    log.info("%s", summary.line(config.inbox))
    return summary


@contextmanager
def _source(config: ReceiveConfig) -> Iterator[Source]:
    if config.folder is not None:
        yield LocalFolder(config.folder)
        return
    assert config.sftp is not None, "the config has one of the two"
    with Remote(config.sftp) as remote:
        yield SftpFolder(remote)


def _status(source: Source) -> tuple[dict[int, Entry], dict[str, int]]:
    """status.xml, and the folder's listing taken with it: one listing a run, since a folder
    of tens of thousands of files is slow to list. What changes after it, the download sees."""
    where = source.where(STATUS_NAME)
    listing = source.listing()
    size = listing.get(STATUS_NAME)
    if size is None:
        raise SyncError(f"{where} is missing: the sender has delivered nothing there yet")
    if size > STATUS_LIMIT:
        raise SyncError(f"{where} is {size >> 20} MiB: no status.xml is that large; not read")
    data = _Bytes(STATUS_LIMIT)
    try:
        source.download(STATUS_NAME, data)
    except Differs as differs:
        raise SyncError(f"{where} {differs}; nothing was taken in, the next run tries again") from None
    checkpoint("receive:status")
    try:
        entries = state.parse(bytes(data.data), where)
    except state.Damaged as exc:
        raise DataError(f"{exc.problem}: nothing was taken in; ask the sender to check its status.xml") from None
    for entry in entries.values():
        # Shown in log lines and kept in received.json: only what the sender itself writes.
        if entry.copy is not None and not _KEY_ID.fullmatch(entry.copy.key_id):
            odd = f"the key-id {entry.copy.key_id[:40]!r}"
        elif entry.deleted is not None and not (entry.deleted.isprintable() and len(entry.deleted) <= 64):
            odd = f"the deleted time {entry.deleted[:40]!r}"
        else:
            continue
        raise DataError(f"{where}: request {entry.id} has {odd}, which the sender never writes: nothing was taken in; "
                        "ask the sender to check its status.xml")
    return entries, listing


class _Bytes:
    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, chunk: bytes) -> int:
        if len(self.data) + len(chunk) > self.limit:
            raise Differs(f"grew beyond {self.limit >> 20} MiB while being read")
        self.data += chunk
        return len(chunk)


class _Bounded:
    """Stops a read at the size status.xml vouches for: a file growing while it is read (or a
    device put under its name) is not read on and on into the state directory."""

    def __init__(self, target: Writer, size: int) -> None:
        self.target = target
        self.left = size

    def write(self, chunk: bytes) -> int:
        self.left -= len(chunk)
        if self.left < 0:
            raise Differs("grew beyond the size status.xml says while being read")
        self.target.write(chunk)
        return len(chunk)


def _take_in(
    config: ReceiveConfig, source: Source, listing: Mapping[str, int], entry: Entry, keys: Mapping[str, bytes], inbox: Inbox
) -> None:
    """Fetches, checks, decrypts and places one request's file; records it in `inbox`."""
    assert entry.copy is not None
    name = result_name(entry.id)
    key = keys.get(entry.copy.key_id)
    if key is None:
        raise Refused(
            f"{name} is encrypted with key id {entry.copy.key_id}, which none of [keys] files has: ask the sender "
            "for that key file (its id is the first 16 hex digits of the SHA-256 of the file's text) and add it "
            "to [keys] files", EX_CONFIG,
        )
    token = config.state_dir / f".receive_{entry.id}.fernet"
    try:
        problem = _fetch(source, listing, name, entry.copy, token)
        if problem:
            raise _mismatch(config, entry, inbox, f"{source.where(name)} {problem}")
        inbox.mismatches.pop(entry.id, None)
        _private_folder(config.inbox, "[inbox] directory")
        unfinished = config.inbox / f".{name}.partial"
        try:
            plain = _decrypt(key, token, unfinished, source.where(name))
            checkpoint("receive:decrypted")
            _place(config.inbox, name, unfinished, plain)
            checkpoint("receive:placed")
        finally:
            unfinished.unlink(missing_ok=True)
    finally:
        token.unlink(missing_ok=True)
    inbox.received[entry.id] = Received(entry.id, entry.copy.sha256, entry.copy.key_id, state.now())
    log.info("request %s: received %s as %s", entry.id, source.where(name), config.inbox / name)


def _fetch(source: Source, listing: Mapping[str, int], name: str, vouched: state.Copy, token: Path) -> str | None:
    """Downloads the token; what makes it differ from status.xml, or None."""
    listed = listing.get(name)
    if listed is None:
        return "is missing"
    if listed != vouched.size:
        return f"has {listed} bytes, status.xml says {vouched.size}"
    with open_private(token) as handle:
        hashing = Hashing(handle)
        try:
            source.download(name, _Bounded(hashing, vouched.size))
        except Differs as differs:
            return str(differs)
        got = handle.tell()
    checkpoint("receive:fetched")
    if got != vouched.size:
        return f"had {got} bytes when read, status.xml says {vouched.size}"
    if hashing.digest.hexdigest() != vouched.sha256:
        return "has a SHA-256 other than status.xml says"
    return None


def _mismatch(config: ReceiveConfig, entry: Entry, inbox: Inbox, problem: str) -> Refused:
    """The sender replaces a file before it uploads status.xml, so a mismatch may pass by the
    next run; only one that persists is an error."""
    assert entry.copy is not None
    before = inbox.mismatches.get(entry.id)
    runs = before.runs + 1 if before and before.sha256 == entry.copy.sha256 else 1
    inbox.mismatches[entry.id] = Mismatch(entry.copy.sha256, runs)
    if runs < config.mismatch_runs:
        return Refused(f"{problem}: not taken in, tried again on the next run ({runs} of {config.mismatch_runs})", 0)
    persisted = f", in {runs} runs in a row" if runs > 1 else ""
    return Refused(
        f"{problem}{persisted}: not taken in; ask the sender to deliver it again "
        f"(aktin-broker-sftp redeliver {entry.id})", EX_DATAERR,
    )


def _decrypt(key: bytes, token: Path, unfinished: Path, where: str) -> str:
    """The plaintext's SHA-256, once it is checked to be a zip."""
    try:
        with open_private(unfinished) as handle:
            hashing = Hashing(handle)
            crypto.decrypt_file(key, token, hashing)
            handle.flush()
            os.fsync(handle.fileno())
    except crypto.InvalidTokenError as exc:
        raise Refused(f"{where} matches status.xml but does not open with its key ({exc})", EX_DATAERR) from None
    try:
        with zipfile.ZipFile(unfinished) as bundle:
            broken = bundle.testzip()
    # What zipfile raises for a member it cannot read: a compression method or encryption it
    # does not know (RuntimeError), a broken LZMA or bzip2 stream (LZMAError, OSError), one cut short.
    except (zipfile.BadZipFile, RuntimeError, lzma.LZMAError, OSError, EOFError) as exc:
        raise Refused(f"{where} decrypts, but not to a zip this can read ({type(exc).__name__}: {exc})", EX_DATAERR) from None
    if broken is not None:
        raise Refused(f"{where} decrypts to a zip whose member {broken!r} is damaged", EX_DATAERR)
    return hashing.digest.hexdigest()


def _place(folder: Path, name: str, unfinished: Path, plain_sha256: str) -> None:
    """Renames the new version into place; the one it replaces goes to previous/ first. A
    file already there with the same content is what an interrupted run placed: it stays."""
    final = folder / name
    if final.exists():
        if _sha256(final) == plain_sha256:
            return
        previous = folder / "previous"
        _private_folder(previous, "[inbox] directory")
        os.replace(final, previous / _next_version(previous, name))
        checkpoint("receive:kept-previous")
    os.replace(unfinished, final)
    _sync(folder)


def _next_version(folder: Path, name: str) -> str:
    stem = name.removesuffix(".zip")
    taken = [int(m[1]) for p in folder.iterdir() if (m := re.fullmatch(rf"{re.escape(stem)}\.([0-9]+)\.zip", p.name))]
    return f"{stem}.{max(taken, default=0) + 1}.zip"


def _withdraw(config: ReceiveConfig, entry: Entry, inbox: Inbox) -> None:
    name = result_name(entry.id)
    placed = config.inbox / name
    withdrawn = config.inbox / "withdrawn"
    if not config.move_withdrawn:
        where = f"{name} left in the inbox" if placed.exists() else f"{name} is no longer in the inbox"
    elif placed.exists():
        _private_folder(withdrawn, "[inbox] directory")
        if (withdrawn / name).exists():
            # Withdrawn before, delivered again and withdrawn once more: the first one is kept too.
            previous = config.inbox / "previous"
            _private_folder(previous, "[inbox] directory")
            os.replace(withdrawn / name, previous / _next_version(previous, name))
        os.replace(placed, withdrawn / name)
        _sync(config.inbox)
        checkpoint("receive:withdrawn")
        where = f"moved {name} to {withdrawn}"
    else:
        # Moved by a run killed before it could record it, or taken away by the recipient.
        where = f"{name} is in {withdrawn}" if (withdrawn / name).exists() else f"{name} is no longer in the inbox"
    log.info("request %s: withdrawn by the sender on %s; %s", entry.id, entry.deleted, where)
    inbox.received[entry.id].withdrawn = entry.deleted


def _drop_leftovers(config: ReceiveConfig) -> None:
    """An interrupted run's token downloads and unfinished plaintext; only our own names."""
    for folder, pattern in ((config.state_dir, _TOKEN), (config.inbox, _UNFINISHED)):
        if folder.is_dir():
            for path in folder.iterdir():
                if pattern.fullmatch(path.name) and path.is_file():
                    path.unlink()


def _private_folder(folder: Path, key: str) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder} cannot be created ({exc.strerror}); check {key}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{folder} is not writable by this user; check {key}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sync(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def status_lines(config: ReceiveConfig) -> list[str]:
    inbox = InboxFile(config.state_dir / STATE_NAME).load()
    if not inbox.received:
        return [f"nothing received yet into {config.inbox}"]
    lines = []
    for taken in sorted(inbox.received.values(), key=lambda r: r.id):
        withdrawn = f", withdrawn {taken.withdrawn}" if taken.withdrawn else ""
        lines.append(f"request {taken.id}: {result_name(taken.id)} received {taken.at} (key id {taken.key_id}, "
                     f"sha256 {taken.sha256[:16]}…){withdrawn}")
    return lines
