"""`verify`: does the SFTP folder hold what the state says was delivered?

Never part of a run: recipients may move files away once they have read them, and a run must
not fight that. The comparison itself is a pure function of the state and one directory listing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aktin_sftp import crypto
from aktin_sftp.config import Config
from aktin_sftp.errors import SyncError
from aktin_sftp.faults import checkpoint
from aktin_sftp.files import Hashing, open_private
from aktin_sftp.maintenance import mark_for_redelivery
from aktin_sftp.sftp import PARTIAL, Remote
from aktin_sftp.state import Entry
from aktin_sftp.sync import STATUS_NAME, WORK_PREFIX, locked_state, result_name


@dataclass
class Drift:
    missing: list[int] = field(default_factory=list)
    # id, recorded size, size in the folder
    wrong_size: list[tuple[int, int, int]] = field(default_factory=list)
    # files in the folder that no delivered request accounts for
    unknown: list[str] = field(default_factory=list)
    # --deep: id and what is wrong with the file's content
    damaged: list[tuple[int, str]] = field(default_factory=list)

    def redeliverable(self) -> list[int]:
        return sorted({*self.missing, *(i for i, _, _ in self.wrong_size), *(i for i, _ in self.damaged)})

    def lines(self, path: Callable[[str], str]) -> list[str]:
        return [
            *(f"missing: {path(result_name(i))} (request {i})" for i in self.missing),
            *(
                f"wrong size: {path(result_name(i))} has {found} bytes, {size} were delivered (request {i})"
                for i, size, found in self.wrong_size
            ),
            *(f"damaged: {path(result_name(i))}: {why} (request {i})" for i, why in self.damaged),
            *(f"unknown to the state: {path(name)}" for name in self.unknown),
        ]


def compare(entries: Mapping[int, Entry], listing: Mapping[str, int]) -> Drift:
    """Sizes are checked where the state recorded one (entries taken over from upstream have
    none). A run's own temporary names are not drift: the next run removes them."""
    drift = Drift()
    expected = {result_name(i): entry for i, entry in entries.items() if entry.deleted is None}
    for name, entry in sorted(expected.items(), key=lambda item: item[1].id):
        if name not in listing:
            drift.missing.append(entry.id)
        elif entry.copy is not None and listing[name] != entry.copy.size:
            drift.wrong_size.append((entry.id, entry.copy.size, listing[name]))
    drift.unknown = sorted(
        name for name in listing if name not in expected and name != STATUS_NAME and not PARTIAL.fullmatch(name)
    )
    return drift


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


def check_content(remote: Remote, entry: Entry, key: bytes, work: Path) -> str | None:
    """--deep: what is wrong with the delivered file's bytes, or None. The token is checked with
    the key in one pass; no plaintext is written anywhere."""
    assert entry.copy is not None
    local = work / f"{WORK_PREFIX}{result_name(entry.id)}.fernet"
    try:
        with open_private(local) as handle:
            hashing = Hashing(handle)
            # One byte beyond the recorded size tells a longer file, without fetching all of it.
            try:
                remote.download(result_name(entry.id), hashing, entry.copy.size + 1)
            except OSError as exc:  # refused by the server, the connection still up
                raise SyncError(f"{result_name(entry.id)} could not be downloaded from the SFTP server ({exc})") from None
        if hashing.digest.hexdigest() != entry.copy.sha256:
            return "its SHA-256 differs from what was uploaded"
        if entry.copy.key_id != crypto.key_id(key):
            return f"encrypted with key id {entry.copy.key_id}, not the configured key; a run re-delivers it"
        try:
            crypto.decrypt_file(key, local, _Discard())
        except crypto.InvalidTokenError as exc:
            return f"the token does not open with the configured key ({exc})"
        return None
    finally:
        local.unlink(missing_ok=True)


def verify(config: Config, deep: bool, repair: bool, show: Callable[[str], None] = print) -> None:
    key = crypto.load_key(config.key_file)
    # One lock for comparing and queueing: a run in between would change what was compared.
    with locked_state(config.state_dir) as store:
        entries = store.load()
        with Remote(config.sftp) as remote:
            listing = remote.listing()
            drift = compare(entries, listing)
            if deep:
                wrong = set(drift.redeliverable())
                for entry in sorted(entries.values(), key=lambda e: e.id):
                    if entry.deleted is not None or entry.copy is None or entry.id in wrong:
                        continue
                    problem = check_content(remote, entry, key, config.state_dir)
                    if problem:
                        drift.damaged.append((entry.id, problem))
            lines = drift.lines(remote.path)
        for line in lines:
            show(line)
        checkpoint("verify:compared")
        if repair and drift.redeliverable():
            mark_for_redelivery(store, drift.redeliverable())
    delivered = sum(1 for entry in entries.values() if entry.deleted is None)
    if not lines:
        what = "size, SHA-256 and token" if deep else "presence and size"
        show(f"verify: the folder matches the state ({delivered} delivered files; {what} checked)")
        return
    summary = f"verify: {len(lines)} differences between the folder and the state"
    if repair:
        summary += f"; {len(drift.redeliverable())} requests queued for re-delivery, unknown files left as they are"
    raise SyncError(summary)
