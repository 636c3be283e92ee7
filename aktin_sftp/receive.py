"""`receive`: the recipient's side. Takes in exactly what the sender's status.xml vouches for:
every file is checked against its recorded size and SHA-256 before it is decrypted, with the key
its recorded key id names, and placed in the inbox as a zip under its final name only when whole.

Nothing is ever removed from the source. Plaintext is written only to the inbox (a temporary
name there, then renamed), mode 0600 in folders of mode 0700 that the sender's login cannot reach.
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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from aktin_sftp import crypto, state
from aktin_sftp.config import ReceiveConfig
from aktin_sftp.crypto import Writer
from aktin_sftp.errors import EX_CONFIG, EX_DATAERR, EX_IOERR, ConfigError, SyncError
from aktin_sftp.faults import checkpoint
from aktin_sftp.files import Hashing
from aktin_sftp.lock import exclusive, held
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


class Unreadable(Exception):
    """A listed file that this user may not, or cannot, read: no later run alone cures that."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code

    @staticmethod
    def of(exc: OSError) -> Unreadable:
        if isinstance(exc, PermissionError):
            return Unreadable("permission denied", EX_CONFIG)
        return Unreadable(exc.strerror or str(exc) or type(exc).__name__, EX_IOERR)


class Source(Protocol):
    def where(self, name: str) -> str: ...

    def listing(self) -> dict[str, int]: ...

    def download(self, name: str, local: Writer, most: int) -> None:
        """Reads at most `most` bytes. Raises Differs when `name` is no regular file (anymore),
        and so may `local.write`; Unreadable when this user may not read it."""


class LocalFolder:
    """The sender's folder on this machine (the recipient's own SFTP upload directory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def listing(self) -> dict[str, int]:
        return {e.name: e.stat().st_size for e in os.scandir(self.folder) if e.is_file(follow_symlinks=False)}

    def download(self, name: str, local: Writer, most: int) -> None:
        # The folder is writable by the sender's login: what was a file when listed may be a
        # symbolic link to any file of this machine, or a FIFO that would block, by now.
        try:
            descriptor = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise Differs("is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Differs("is a symbolic link") from None
            if exc.errno == errno.ENXIO:  # a socket
                raise Differs("is not a regular file") from None
            raise Unreadable.of(exc) from None
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise Differs("is not a regular file")
            while most > 0:
                try:
                    chunk = handle.read(min(1 << 20, most))
                except OSError as exc:
                    raise Unreadable.of(exc) from None
                if not chunk:
                    return
                most -= len(chunk)
                local.write(chunk)


class SftpFolder:
    """The sender's folder on an SFTP server; every wait is bounded by [sftp] timeout."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def where(self, name: str) -> str:
        return self.remote.path(name)

    def listing(self) -> dict[str, int]:
        return self.remote.listing()

    def download(self, name: str, local: Writer, most: int) -> None:
        try:
            self.remote.download(name, local, most)
        except PermissionError as exc:
            raise Unreadable.of(exc) from None
        except OSError as exc:
            # Some servers answer "no such file" as a plain failure; the folder tells which.
            if isinstance(exc, FileNotFoundError) or name not in self.remote.listing():
                raise Differs("is missing") from None
            raise Unreadable.of(exc) from None


@dataclass
class Due:
    """What a run has to do, decided from status.xml and the recipient's state alone."""

    fetch: list[Entry] = field(default_factory=list)
    # Each withdrawal is reported once, also of a request this recipient never received.
    withdrawn: list[Entry] = field(default_factory=list)
    # Listed without size and SHA-256 (written by the upstream uploader): nothing vouches for them.
    unvouched: list[int] = field(default_factory=list)


def due(entries: Mapping[int, Entry], inbox: Inbox) -> Due:
    plan = Due()
    for entry in sorted(entries.values(), key=lambda e: e.id):
        taken = inbox.received.get(entry.id)
        if entry.deleted is not None:
            if taken is not None:
                reported = taken.withdrawn is not None
            else:
                # Delivered again and withdrawn once more, never received: a withdrawal of its own.
                reported = inbox.withdrawn_unreceived.get(entry.id) == entry.deleted
            if not reported:
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
    _check_places(config)
    if dry_run:
        return _dry_run(config, keys, show)
    _private_folder(config.state_dir, "[state] directory")
    _private_folder(config.inbox, "[inbox] directory")
    with exclusive(config.state_dir / "lock"), _one_run_in(config.inbox):
        # Before anything that may fail: a killed run's plaintext is not left for longer.
        _drop_leftovers(config)
        with _source(config) as source:
            summary = _take_all_in(config, source, keys)
    if summary.exit_code:
        raise Unfinished(summary.line(config.inbox), summary.exit_code)
    log.info("%s", summary.line(config.inbox))
    return summary


def _take_all_in(config: ReceiveConfig, source: Source, keys: Mapping[str, bytes]) -> Summary:
    store = InboxFile(config.state_dir / STATE_NAME)
    inbox = store.load()
    entries, listing = _status(source)
    plan = due(entries, inbox)
    summary = Summary(unchanged=_unchanged(entries, plan))
    _refuse_unvouched(plan, source, summary)
    for entry in plan.withdrawn:
        _withdraw(config, entry, inbox)
        store.save(inbox)
        summary.withdrawn += 1
    for entry in plan.fetch:
        try:
            _take_in(config, source, listing, entry, keys, inbox)
            summary.received += 1
        except Refused as refusal:
            _report(entry, refusal, summary)
        store.save(inbox)
        checkpoint("receive:recorded")
    return summary


def _dry_run(config: ReceiveConfig, keys: Mapping[str, bytes], show: Callable[[str], None]) -> Summary:
    """What a run would do, short of fetching (its summary counts what would be received):
    nothing is created, not even the state directory. received.json is read without the lock,
    as a run replaces it atomically."""
    inbox = InboxFile(config.state_dir / STATE_NAME).load()
    with _source(config) as source:
        entries, _ = _status(source)
        plan = due(entries, inbox)
        summary = Summary(unchanged=_unchanged(entries, plan))
        _refuse_unvouched(plan, source, summary)
    for entry in plan.fetch:
        try:
            _key(entry, keys)
        except Refused as refusal:
            _report(entry, refusal, summary)
            continue
        summary.received += 1
        show(f"would receive request {entry.id} ({'changed' if entry.id in inbox.received else 'new'})")
    for entry in plan.withdrawn:
        show(f"would report request {entry.id} as withdrawn")
    line = (f"receive --dry-run: {summary.received} to receive, {len(plan.withdrawn)} withdrawn, "
            f"{summary.refused} refused, {summary.unchanged} unchanged; nothing was changed")
    if summary.exit_code:
        raise Unfinished(line, summary.exit_code)
    show(line)
    return summary


def _unchanged(entries: Mapping[int, Entry], plan: Due) -> int:
    return len(entries) - len(plan.fetch) - len(plan.withdrawn) - len(plan.unvouched)


def _refuse_unvouched(plan: Due, source: Source, summary: Summary) -> None:
    """A warning, as the sender's next run delivers an upstream uploader's request anew, with both."""
    for request_id in plan.unvouched:
        log.warning("request %s: %s lists no size and SHA-256 for it (an upstream uploader's): not taken in",
                    request_id, source.where(STATUS_NAME))
        summary.refused += 1


def _report(entry: Entry, refusal: Refused, summary: Summary) -> None:
    log.log(logging.ERROR if refusal.exit_code else logging.WARNING, "request %s: %s", entry.id, refusal)
    summary.refused += 1
    summary.exit_code = max(summary.exit_code, refusal.exit_code)


def _one_run_in(inbox: Path) -> AbstractContextManager[None]:
    """One run at a time in an inbox, which several configs may share: a lock on the folder
    itself, which puts no file among the recipient's."""
    return held(
        os.open(inbox, os.O_RDONLY | os.O_DIRECTORY),
        f"another run holds {inbox} (of a config sharing this inbox)",
    )


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
        source.download(STATUS_NAME, data, STATUS_LIMIT + 1)
    except Differs as differs:
        raise SyncError(f"{where} {differs}; nothing was taken in, the next run tries again") from None
    except Unreadable as unreadable:
        raise Unfinished(f"{where} cannot be read by this user ({unreadable}); nothing was taken in",
                         unreadable.exit_code) from None
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

    def __init__(self, target: Writer, size: int, token: Path) -> None:
        self.target = target
        self.left = size
        self.token = token

    def write(self, chunk: bytes) -> int:
        self.left -= len(chunk)
        if self.left < 0:
            raise Differs("grew beyond the size status.xml says while being read")
        try:
            self.target.write(chunk)
        except OSError as exc:
            # No OSError on its way out through the source, which takes those for its own.
            raise _unwritable(self.token, exc) from None
        return len(chunk)


def _unwritable(token: Path, exc: OSError) -> SyncError:
    """This machine's disk, not the source: every request after this one would fail the same way."""
    return SyncError(
        f"{token} cannot be written ({exc.strerror or exc}): make room in [state] directory {token.parent} (a full "
        "disk or an exceeded quota shows up this way); nothing more was taken in, the next run continues"
    )


def _take_in(
    config: ReceiveConfig, source: Source, listing: Mapping[str, int], entry: Entry, keys: Mapping[str, bytes], inbox: Inbox
) -> None:
    """Fetches, checks, decrypts and places one request's file; records it in `inbox`."""
    assert entry.copy is not None
    name = result_name(entry.id)
    where = source.where(name)
    key = _key(entry, keys)
    token = config.state_dir / f".receive_{entry.id}.fernet"
    with _temporary(token) as downloaded:
        problem = _fetch(source, listing, name, entry.copy, downloaded, token)
        if problem:
            raise _mismatch(config, entry, inbox, f"{where} {problem}")
        inbox.mismatches.pop(entry.id, None)
        unfinished = config.inbox / f".{name}.partial"
        with _temporary(unfinished) as plain:
            plain_sha256 = _decrypt(key, token, plain, where)
            checkpoint("receive:decrypted")
            _place(config.inbox, name, unfinished, plain_sha256)
            checkpoint("receive:placed")
    inbox.received[entry.id] = Received(entry.id, entry.copy.sha256, entry.copy.key_id, state.now())
    inbox.withdrawn_unreceived.pop(entry.id, None)
    log.info("request %s: received %s as %s", entry.id, where, config.inbox / name)


@contextmanager
def _temporary(path: Path) -> Iterator[BinaryIO]:
    """A new file of mode 0600 under one of our temporary names, gone again when the block ends
    (renamed into place by then, or not wanted). The run removed its leftovers under these names
    before it began: whatever is there now (a link put there to lead plaintext elsewhere)
    something else put there, so it is neither written through nor removed."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise Refused(
            f"{path} is already there, put there by something other than this run after it began: not taken in; "
            "find out what put it there: the next run removes it (a name of receive's own) and takes the request in",
            EX_CONFIG,
        ) from None
    try:
        with os.fdopen(descriptor, "w+b") as handle:
            yield handle
    finally:
        path.unlink(missing_ok=True)


def _key(entry: Entry, keys: Mapping[str, bytes]) -> bytes:
    assert entry.copy is not None
    key = keys.get(entry.copy.key_id)
    if key is None:
        raise Refused(
            f"{result_name(entry.id)} is encrypted with key id {entry.copy.key_id}, which none of [keys] files has: "
            "ask the sender for that key file (its id is the first 16 hex digits of the SHA-256 of the file's text) "
            "and add it to [keys] files", EX_CONFIG,
        )
    return key


def _fetch(
    source: Source, listing: Mapping[str, int], name: str, vouched: state.Copy, downloaded: BinaryIO, token: Path
) -> str | None:
    """Downloads the token; what makes it differ from status.xml, or None."""
    listed = listing.get(name)
    if listed is None:
        return "is missing"
    if listed != vouched.size:
        return f"has {listed} bytes, status.xml says {vouched.size}"
    hashing = Hashing(downloaded)
    try:
        source.download(name, _Bounded(hashing, vouched.size, token), vouched.size + 1)
    except Differs as differs:
        return str(differs)
    except Unreadable as unreadable:
        raise _unreadable(source.where(name), unreadable) from None
    try:
        downloaded.flush()
    except OSError as exc:
        raise _unwritable(token, exc) from None
    checkpoint("receive:fetched")
    got = downloaded.tell()
    if got != vouched.size:
        return f"had {got} bytes when read, status.xml says {vouched.size}"
    if hashing.digest.hexdigest() != vouched.sha256:
        return "has a SHA-256 other than status.xml says"
    return None


def _unreadable(where: str, unreadable: Unreadable) -> Refused:
    if unreadable.exit_code == EX_CONFIG:
        return Refused(
            f"{where} cannot be read by this user ({unreadable}): not taken in; the sender's files must be readable by "
            "the user receive runs as (over SFTP, by [sftp] username)", EX_CONFIG,
        )
    return Refused(f"{where} cannot be read ({unreadable}): not taken in, tried again on the next run", unreadable.exit_code)


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


def _decrypt(key: bytes, token: Path, plain: BinaryIO, where: str) -> str:
    """The plaintext's SHA-256, once it is checked to be a zip."""
    hashing = Hashing(plain)
    try:
        crypto.decrypt_file(key, token, hashing)
    except crypto.InvalidTokenError as exc:
        raise Refused(f"{where} matches status.xml but does not open with its key ({exc})", EX_DATAERR) from None
    plain.flush()
    os.fsync(plain.fileno())
    plain.seek(0)
    try:
        # What was written, through the same descriptor: not whatever is under the name by now.
        with zipfile.ZipFile(plain) as bundle:
            broken = bundle.testzip()
    # What zipfile raises for a member it cannot read: a compression method or encryption it
    # does not know (RuntimeError), a broken LZMA or bzip2 stream (LZMAError, OSError), one cut short.
    except (zipfile.BadZipFile, RuntimeError, lzma.LZMAError, OSError, EOFError) as exc:
        raise Refused(
            f"{where} decrypts, but not to a zip this can read ({type(exc).__name__}: {exc})", EX_DATAERR
        ) from None
    if broken is not None:
        raise Refused(f"{where} decrypts to a zip whose member {broken!r} is damaged", EX_DATAERR)
    return hashing.digest.hexdigest()


def _place(folder: Path, name: str, unfinished: Path, plain_sha256: str) -> None:
    """Renames the new version into place; the one it replaces goes to previous/ first. A
    file already there with the same content is what an interrupted run placed: it stays."""
    final = folder / name
    there = _placed_sha256(final)
    if there == plain_sha256:
        return
    if there is not None:
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
    assert entry.deleted is not None
    name = result_name(entry.id)
    if entry.id not in inbox.received:
        log.info("request %s: withdrawn by the sender on %s before this recipient received it (received.json has "
                 "no record of it); the inbox is left as it is", entry.id, entry.deleted)
        inbox.withdrawn_unreceived[entry.id] = entry.deleted
        return
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
    """An interrupted run's token downloads and unfinished plaintext; only our own names, and
    links under them too (which would lead the next write elsewhere)."""
    for folder, pattern in ((config.state_dir, _TOKEN), (config.inbox, _UNFINISHED)):
        for path in folder.iterdir():
            if pattern.fullmatch(path.name) and (path.is_symlink() or not path.is_dir()):
                log.info("removing %s, left by an interrupted run (or put under a name of receive's own)", path)
                path.unlink()


def _check_places(config: ReceiveConfig) -> None:
    """Plaintext and state where no one else reaches them: checked before a run (or a dry run)
    creates anything."""
    for folder, key in ((config.inbox, "[inbox] directory"), (config.state_dir, "[state] directory")):
        if config.folder is not None:
            source = config.folder.resolve()
            if source == folder.resolve() or source in folder.resolve().parents:
                raise ConfigError(
                    f"{key} {folder} is inside [source] folder {config.folder}, which the sender's login can reach: "
                    "choose a directory outside it"
                )
        if folder.exists():
            _closed(folder, key)
    # Checked here too, not only when a file is moved there, which would be after it was decrypted.
    for folder in (config.inbox / "previous", config.inbox / "withdrawn"):
        if folder.exists():
            _closed(folder, "[inbox] directory")


def _private_folder(folder: Path, key: str) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder} cannot be created ({exc.strerror}); check {key}") from None
    _closed(folder, key)
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{folder} is not writable by this user; check {key}")


def _closed(folder: Path, key: str) -> None:
    """A folder created earlier, by hand or by a package, may be open to others: refused, not
    changed, as its mode may be what someone else relies on."""
    mode = folder.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"{folder} is not a directory; check {key}")
    if mode & 0o077:
        raise ConfigError(
            f"{folder} is open to other users (mode {mode & 0o777:o}), and it holds received data: "
            f"run 'chmod 700 {folder}' (or check {key})"
        )


def _placed_sha256(path: Path) -> str | None:
    """Of the file under a final name in the inbox; None when there is none. Anything else
    there is refused: reading a FIFO would wait forever, a link to a device read on and on."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise _not_a_file(path) from None
        raise _unreadable_placed(path, exc) from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise _not_a_file(path)
        digest = hashlib.sha256()
        try:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        except OSError as exc:
            raise _unreadable_placed(path, exc) from None
    return digest.hexdigest()


def _unreadable_placed(path: Path, exc: OSError) -> Refused:
    """Put there by someone else (a copy by root, say): only this request waits for it."""
    unreadable = Unreadable.of(exc)
    by = " by this user" if unreadable.exit_code == EX_CONFIG else ""
    return Refused(
        f"{path} cannot be read{by} ({unreadable}), so the received file is not placed there: make it readable, or "
        "move it away, and the next run places it", unreadable.exit_code,
    )


def _not_a_file(path: Path) -> Refused:
    return Refused(
        f"{path} is not a regular file, so the received file is not placed there: move it away, and the next run "
        "places it", EX_CONFIG,
    )


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
