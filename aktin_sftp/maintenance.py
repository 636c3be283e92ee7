"""Changes an operator makes to the state between runs: taking over another uploader's
status.xml, and queueing requests for re-delivery. Each holds the run lock while it writes."""

from __future__ import annotations

import logging
from pathlib import Path

from aktin_sftp.errors import ConfigError, SyncError
from aktin_sftp.state import Damaged, StatusFile, now, parse
from aktin_sftp.sync import locked_state, shown_ids

log = logging.getLogger(__name__)


def import_status(state_dir: Path, source: Path) -> None:
    """Takes over another uploader's status.xml as this service's state: upload times and
    removals are kept, and its requests count as delivered by this service from now on. Refuses
    to replace a state that records anything."""
    try:
        entries = parse(source.read_bytes(), str(source))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{source}: not readable by this user") from None
    except Damaged as exc:
        raise SyncError(f"{exc.problem}; nothing was imported") from None
    with locked_state(state_dir) as store:
        existing = store.load()
        if existing:
            raise SyncError(
                f"{store.path} already records {len(existing)} requests; refusing to replace it "
                "(move it away first if the imported file is to count instead)"
            )
        store.save(entries)
    log.info(
        "imported %d requests from %s into %s; the next run delivers them once more, as that file "
        "does not say which node results they hold",
        len(entries), source, store.path,
    )


def queue_redelivery(state_dir: Path, ids: list[int] | None) -> list[int]:
    """Marks delivered requests (all of them for None) so that the next run delivers them again."""
    with locked_state(state_dir) as store:
        return mark_for_redelivery(store, ids)


def mark_for_redelivery(store: StatusFile, ids: list[int] | None) -> list[int]:
    """`queue_redelivery` for a caller that already holds the run lock."""
    entries = store.load()
    delivered = {i for i, entry in entries.items() if entry.deleted is None}
    chosen = sorted(delivered if ids is None else set(ids))
    unknown = [i for i in chosen if i not in delivered]
    if unknown:
        raise SyncError(
            f"requests {shown_ids(unknown)} are not delivered at the moment (never, or removed since); "
            "nothing was queued. A run delivers every tagged request by itself"
        )
    requested = now()
    for request_id in chosen:
        entries[request_id].redeliver = requested
    store.save(entries)
    log.info("queued %d requests for re-delivery (ids %s); the next run delivers them", len(chosen), shown_ids(chosen))
    return chosen
