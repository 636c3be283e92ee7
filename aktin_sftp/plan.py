"""What a run has to do, decided without any I/O from what the broker shows and what was delivered."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aktin_sftp.broker import RESULT_STATES, NodeStatus
from aktin_sftp.state import Entry


class Reason(enum.Enum):
    NEW = "new"
    CHANGED = "changed"
    REAPPEARED = "reappeared"
    REQUESTED = "re-delivery requested"
    KEY_CHANGED = "encryption key changed"
    MOVED = "destination changed"


@dataclass(frozen=True)
class Target:
    """Where files go now and with which key; a file delivered elsewhere or with another key
    is delivered again."""

    key_id: str
    destination: str


@dataclass(frozen=True)
class Observed:
    """One tagged request as the broker shows it now."""

    id: int
    fingerprint: str
    completion: str


@dataclass(frozen=True)
class Plan:
    deliver: tuple[tuple[int, Reason], ...]
    remove: tuple[int, ...]
    unchanged: tuple[int, ...]
    # Removals that the max_delete guard held back; the run must fail if there are any.
    held_back: tuple[int, ...] = ()
    # Gone requests whose file is at an earlier destination: their removal is only recorded,
    # since the current destination never received their file.
    forget: tuple[int, ...] = ()


def fingerprint(statuses: Iterable[NodeStatus]) -> str:
    """Changes whenever any node completes, re-submits, rejects or fails, and only then: a node
    that merely retrieved or works on the request adds nothing the recipient could use yet."""
    digest = hashlib.sha256()
    for status in sorted(statuses, key=lambda s: s.node):
        stamps = "|".join(status.stamp(state) or "" for state in RESULT_STATES)
        if stamps.strip("|"):
            digest.update(f"{status.node}:{stamps}\n".encode())
    return digest.hexdigest()


def completion(statuses: Iterable[NodeStatus]) -> str:
    """Completed nodes over nodes with a status row, written the way upstream wrote it."""
    statuses = list(statuses)
    if not statuses:
        return "0.0"
    done = sum(1 for status in statuses if status.stamp("completed"))
    return str(round(done / len(statuses), 2))


def make_plan(
    observed: Iterable[Observed], known: Mapping[int, Entry], max_delete: int, target: Target,
    unobserved: Iterable[int] = (),
) -> Plan:
    """`unobserved` are listed requests whose status could not be read: neither delivered nor
    removed in this run. The max_delete guard holds back removals only, never deliveries."""
    deliver: list[tuple[int, Reason]] = []
    unchanged: list[int] = []
    listed: set[int] = set(unobserved)
    for request in sorted(observed, key=lambda r: r.id):
        listed.add(request.id)
        entry = known.get(request.id)
        if entry is None:
            deliver.append((request.id, Reason.NEW))
        elif entry.deleted is not None:
            deliver.append((request.id, Reason.REAPPEARED))
        elif entry.fingerprint != request.fingerprint:
            # An entry taken over from upstream has no fingerprint: it is delivered once more
            # rather than trusting upstream's completion ratio, which missed real changes.
            deliver.append((request.id, Reason.CHANGED))
        elif entry.redeliver is not None:
            deliver.append((request.id, Reason.REQUESTED))
        # An entry without a recorded copy predates these records; it is taken as it is.
        elif entry.copy is not None and entry.copy.key_id != target.key_id:
            deliver.append((request.id, Reason.KEY_CHANGED))
        elif entry.copy is not None and entry.copy.destination != target.destination:
            deliver.append((request.id, Reason.MOVED))
        else:
            unchanged.append(request.id)
    gone = tuple(sorted(i for i, entry in known.items() if entry.deleted is None and i not in listed))
    if len(gone) > max_delete:
        return Plan(tuple(deliver), (), tuple(unchanged), held_back=gone)
    here = tuple(i for i in gone if delivered_here(known[i], target))
    return Plan(tuple(deliver), here, tuple(unchanged), forget=tuple(i for i in gone if i not in here))


def delivered_here(entry: Entry, target: Target) -> bool:
    """Whether the entry's file is at the current destination. An entry without a recorded copy
    (taken over from upstream) was delivered by the uploader this config replaced, to its folder."""
    return entry.copy is None or entry.copy.destination == target.destination
