"""One delivery run, in the order DEVELOPERS.md describes it."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aktin_sftp import crypto, events, progress
from aktin_sftp.broker import Broker, RequestFailed
from aktin_sftp.config import Config
from aktin_sftp.errors import SyncError
from aktin_sftp.faults import checkpoint
from aktin_sftp.lock import exclusive
from aktin_sftp.plan import Observed, Plan, Reason, completion, fingerprint, make_plan
from aktin_sftp.sftp import Remote
from aktin_sftp.state import Entry, StatusFile, now

log = logging.getLogger(__name__)

STATUS_NAME = "status.xml"


def result_name(request_id: int) -> str:
    return f"export_{request_id}.zip"


@dataclass
class Outcome:
    delivered: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def run(config: Config, dry_run: bool = False, show: Callable[[str], None] = print) -> Outcome:
    state_dir = config.state_dir
    if dry_run:
        entries = StatusFile(state_dir / STATUS_NAME).load()
        plan = _plan(config, entries)
        _show_plan(plan, show)
        return Outcome()
    _prepare(state_dir)
    with exclusive(state_dir / "lock"):
        store = StatusFile(state_dir / STATUS_NAME)
        entries = store.load()
        key = crypto.load_key(config.key_file)
        with Broker(config.broker) as broker:
            observed = observe(broker, config.broker.tag)
            plan = make_plan(observed.values(), entries, config.max_delete)
            log.info(
                "plan: %d to deliver, %d to remove, %d unchanged",
                len(plan.deliver), len(plan.remove), len(plan.unchanged),
            )
            outcome = Outcome()
            with Remote(config.sftp) as remote:
                remote.remove_partials()
                work = _clean_work_dir(state_dir)
                for request_id, reason in plan.deliver:
                    started = time.monotonic()
                    try:
                        size = deliver(broker, remote, key, work, request_id)
                    except RequestFailed as exc:
                        log.error("request %d not delivered: %s", request_id, exc, extra={"REQUEST_ID": request_id})
                        outcome.failed.append(str(exc))
                        continue
                    seconds = time.monotonic() - started
                    _record_delivery(entries, observed[request_id], reason, size, seconds, remote.path(result_name(request_id)))
                    store.save(entries)
                    outcome.delivered.append(request_id)
                    checkpoint("delivered")
                for request_id in plan.remove:
                    path = remote.path(result_name(request_id))
                    existed = remote.remove(result_name(request_id))
                    entries[request_id].deleted = now()
                    store.save(entries)
                    outcome.removed.append(request_id)
                    log.info(
                        "removed request %d: %s (gone from the broker%s)",
                        request_id, path, "" if existed else "; the file was already absent",
                        extra={"MESSAGE_ID": events.REMOVED, "REQUEST_ID": request_id, "REMOTE_PATH": path},
                    )
                # Saved once more so that a first run without deliveries has a file to upload too.
                store.save(entries)
                remote.upload(store.path, STATUS_NAME)
    if plan.held_back:
        outcome.failed.append(
            f"{len(plan.held_back)} requests are gone from the broker listing (ids {_ids(plan.held_back)}), "
            f"more than [state] max_delete = {config.max_delete}; nothing was removed. If that is intended, "
            "raise max_delete for one run"
        )
    if outcome.failed:
        raise SyncError("; ".join(outcome.failed))
    log.info(
        "run finished: %d delivered, %d removed, %d unchanged",
        len(outcome.delivered), len(outcome.removed), len(plan.unchanged),
        extra={"MESSAGE_ID": events.RUN_FINISHED},
    )
    return outcome


def observe(broker: Broker, tag: str) -> dict[int, Observed]:
    statuses = broker.all_node_statuses(broker.tagged_request_ids(tag))
    return {i: Observed(i, fingerprint(nodes), completion(nodes)) for i, nodes in statuses.items()}


def deliver(broker: Broker, remote: Remote, key: bytes, work: Path, request_id: int) -> int:
    """Export, download, encrypt and upload one request's bundle; returns the uploaded size.
    Each step streams through files in `work`, so memory stays flat whatever the size."""
    plain = work / f"{result_name(request_id)}.download"
    token = work / f"{result_name(request_id)}.fernet"
    try:
        broker.export(request_id, plain)
        with open(plain, "rb") as source, _private_writer(token) as target:
            crypto.encrypt_stream(key, source, target)
        plain.unlink()
        return remote.upload(token, result_name(request_id), progress.for_terminal(result_name(request_id)))
    finally:
        plain.unlink(missing_ok=True)
        token.unlink(missing_ok=True)


def _record_delivery(
    entries: dict[int, Entry], request: Observed, reason: Reason, size: int, seconds: float, remote_path: str
) -> None:
    entry = entries.setdefault(request.id, Entry(request.id, request.completion))
    entry.delivered(request.completion, request.fingerprint, now())
    first = reason is Reason.NEW
    log.info(
        "%s request %d (%s, completion %s): %s, %d bytes in %.1f s",
        "delivered" if first else "re-delivered", request.id, reason.value, request.completion, remote_path, size, seconds,
        extra={
            "MESSAGE_ID": events.DELIVERED if first else events.REDELIVERED,
            "REQUEST_ID": request.id,
            "REMOTE_PATH": remote_path,
            "BYTES": size,
            "DURATION_SECONDS": f"{seconds:.3f}",
        },
    )


def _plan(config: Config, entries: dict[int, Entry]) -> Plan:
    with Broker(config.broker) as broker:
        return make_plan(observe(broker, config.broker.tag).values(), entries, config.max_delete)


def _show_plan(plan: Plan, show: Callable[[str], None]) -> None:
    for request_id, reason in plan.deliver:
        show(f"would deliver request {request_id} ({reason.value}) as {result_name(request_id)}")
    for request_id in plan.remove:
        show(f"would remove request {request_id}: {result_name(request_id)}")
    if plan.held_back:
        show(f"would refuse to remove {len(plan.held_back)} requests ({_ids(plan.held_back)}): more than max_delete")
    show(f"{len(plan.unchanged)} unchanged; dry run, nothing was changed")


def _prepare(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SyncError(f"state directory {state_dir} cannot be created ({exc.strerror})") from None


def _clean_work_dir(state_dir: Path) -> Path:
    """Downloads and tokens of an interrupted run are dropped; their requests are still due."""
    work = state_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    return work


def _private_writer(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _ids(ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (", …" if len(ids) > 10 else "")
