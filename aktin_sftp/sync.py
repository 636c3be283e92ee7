"""One delivery run, in the order DEVELOPERS.md describes it."""

from __future__ import annotations

import logging
import os
import pwd
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aktin_sftp import crypto, events, lastrun, progress
from aktin_sftp.broker import Broker, RequestFailed
from aktin_sftp.config import DEFAULT_STATE_DIR, Config, SftpConfig
from aktin_sftp.errors import Cancelled, ConfigError, SyncError
from aktin_sftp.faults import checkpoint
from aktin_sftp.files import Hashing, open_private
from aktin_sftp.lock import exclusive
from aktin_sftp.plan import Observed, Plan, Reason, Target, completion, fingerprint, make_plan
from aktin_sftp.sftp import Remote
from aktin_sftp.state import Copy, Entry, StatusFile, now

log = logging.getLogger(__name__)

STATUS_NAME = "status.xml"
# Local files of a delivery in progress live in the state directory under names no operator
# would choose, so that a run can clean up after a crash without touching anything else.
WORK_PREFIX = ".aktin-broker-sftp."
_LEFTOVER = re.compile(re.escape(WORK_PREFIX) + r"export_[0-9]+\.zip\.(download|fernet)")


def result_name(request_id: int) -> str:
    return f"export_{request_id}.zip"


@dataclass
class Outcome:
    delivered: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def run(config: Config, dry_run: bool = False, show: Callable[[str], None] = print) -> Outcome:
    if dry_run:
        key, target = _key_and_target(config)
        entries = StatusFile(config.state_dir / STATUS_NAME).load()
        with Broker(config.broker) as broker:
            observed, unreadable = observe(broker, config.broker.tag)
        _show_plan(make_plan(observed.values(), entries, config.max_delete, target, unreadable), unreadable, show)
        return Outcome()
    with locked_state(config.state_dir) as store, lastrun.recorded(config.state_dir):
        key, target = _key_and_target(config)
        entries = store.load()
        with Broker(config.broker) as broker, _connecting(config.sftp) as connected:
            observed, unreadable = observe(broker, config.broker.tag)
            plan = make_plan(observed.values(), entries, config.max_delete, target, unreadable)
            log.info(
                "plan: %d to deliver, %d to remove, %d unchanged",
                len(plan.deliver), len(plan.remove) + len(plan.forget), len(plan.unchanged),
            )
            _announce_moves(plan, entries, target)
            remote = connected()
            remote.remove_partials()
            _drop_leftovers(config.state_dir)
            delivery = _Delivery(broker, remote, store, entries, key, target, config.state_dir, config.sftp.parallel)
            delivery.outcome.failed.extend(f"{failure}; request {i} is left as it is" for i, failure in unreadable.items())
            delivery.deliver_all(plan.deliver, observed)
            delivery.remove_all(plan.remove, plan.forget, config.broker.tag)
            delivery.publish_status()
    return _finish(delivery.outcome, plan, config.max_delete)


def _key_and_target(config: Config) -> tuple[bytes, Target]:
    key = crypto.load_key(config.key_file)
    return key, Target(crypto.key_id(key), config.sftp.destination)


def _announce_moves(plan: Plan, entries: dict[int, Entry], target: Target) -> None:
    """A new key or destination re-delivers every file: said once, with the count, rather
    than only in each request's own line."""
    for reason, what, now_is, message_id in (
        (Reason.KEY_CHANGED, "the encryption key", f"key id {target.key_id}", events.KEY_CHANGED),
        (Reason.MOVED, "the SFTP destination", target.destination, events.DESTINATION_CHANGED),
    ):
        due = [i for i, why in plan.deliver if why is reason]
        if due:
            before = sorted({_recorded(entries[i], reason) for i in due})
            log.warning(
                "%s changed (was %s, now %s): %d delivered files are delivered again; files at the old "
                "destination are left as they are", what, ", ".join(before), now_is, len(due),
                extra={"MESSAGE_ID": message_id},
            )


def _recorded(entry: Entry, reason: Reason) -> str:
    assert entry.copy is not None
    return f"key id {entry.copy.key_id}" if reason is Reason.KEY_CHANGED else entry.copy.destination


@contextmanager
def _connecting(settings: SftpConfig) -> Iterator[Callable[[], Remote]]:
    """Logs into the SFTP server while the broker is being asked, which takes the SSH
    handshake off the run's critical path. Yields a call that waits for the session (or raises
    what went wrong); the session is closed however the run ends."""
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(Remote, settings)
        try:
            yield login.result
        finally:
            if login.exception() is None:
                login.result().close()


def observe(broker: Broker, tag: str) -> tuple[dict[int, Observed], dict[int, RequestFailed]]:
    """The tagged requests as the broker shows them, and those whose status it failed to give."""
    observed, unreadable = {}, {}
    for i, nodes in broker.all_node_statuses(broker.tagged_request_ids(tag)).items():
        if isinstance(nodes, RequestFailed):
            log.warning("request %d: %s; it is neither delivered nor removed in this run", i, nodes,
                        extra={"MESSAGE_ID": events.STATUS_UNREADABLE, "REQUEST_ID": i})
            unreadable[i] = nodes
        else:
            observed[i] = Observed(i, fingerprint(nodes), completion(nodes))
    return observed, unreadable


def deliver(
    broker: Broker, remote: Remote, key: bytes, target: Target, work: Path, request_id: int,
    cancelled: threading.Event, show_progress: bool = True,
) -> Copy:
    """Export, download, encrypt and upload one request's bundle; returns what was uploaded.
    Each step streams through files in `work` (the state directory), so memory stays flat
    whatever the size. Once the run has failed (`cancelled`), no export starts (Cancelled)."""
    plain = work / f"{WORK_PREFIX}{result_name(request_id)}.download"
    token = work / f"{WORK_PREFIX}{result_name(request_id)}.fernet"
    try:
        broker.export(request_id, plain, cancelled)
        with open(plain, "rb") as source, open_private(token) as handle:
            hashing = Hashing(handle)
            crypto.encrypt_stream(key, source, hashing)
        # The plain bundle goes before the upload, so a large delivery needs its size on disk once, not twice.
        plain.unlink()
        # Progress lines of several uploads at once would overwrite each other.
        shown = progress.for_terminal(result_name(request_id)) if show_progress else None
        size = remote.upload(token, result_name(request_id), shown)
        return Copy(target.key_id, target.destination, size, hashing.digest.hexdigest())
    finally:
        plain.unlink(missing_ok=True)
        token.unlink(missing_ok=True)


class _Delivery:
    """Steps 4 to 6 of a run, recording each delivery and removal as soon as it is done."""

    def __init__(
        self, broker: Broker, remote: Remote, store: StatusFile, entries: dict[int, Entry], key: bytes,
        target: Target, work: Path, parallel: int,
    ) -> None:
        self.broker = broker
        self.parallel = parallel
        self.recording = threading.Lock()
        self.remote = remote
        self.store = store
        self.entries = entries
        self.key = key
        self.target = target
        self.work = work
        self.outcome = Outcome()

    def deliver_all(self, due: tuple[tuple[int, Reason], ...], observed: dict[int, Observed]) -> None:
        """Up to `[sftp] parallel` requests at a time, each on an SFTP channel of its own: one
        request's export and download overlap another's encryption and upload. A failure that
        ends the run (the connection lost, say) lets the deliveries under way finish, and no
        request's export starts after it; it is raised once they are done."""
        workers = min(self.parallel, len(due))
        if workers == 0:
            return
        channels: queue.SimpleQueue[Remote] = queue.SimpleQueue()
        channels.put(self.remote)
        stop = threading.Event()

        def open_more() -> None:
            # The first deliveries start on the channel at hand while the others open.
            try:
                self.remote.more_channels(workers - 1, channels.put)
            except SyncError as exc:
                log.warning("delivering over fewer SFTP channels than [sftp] parallel = %d: %s", self.parallel, exc)

        def one(request_id: int, reason: Reason) -> None:
            if stop.is_set():
                return
            channel = channels.get()
            try:
                self._deliver_one(channel, request_id, reason, observed[request_id], stop, workers == 1)
            except Cancelled:
                return
            except BaseException:
                stop.set()
                raise
            finally:
                channels.put(channel)

        with ThreadPoolExecutor(workers + 1) as pool:
            done = [pool.submit(open_more)]
            done += [pool.submit(one, request_id, reason) for request_id, reason in due]
        for future in done:
            failure = future.exception()
            if failure is not None:
                raise failure

    def _deliver_one(
        self, channel: Remote, request_id: int, reason: Reason, request: Observed, cancelled: threading.Event,
        show_progress: bool,
    ) -> None:
        started = time.monotonic()
        try:
            copy = deliver(self.broker, channel, self.key, self.target, self.work, request_id, cancelled, show_progress)
        except RequestFailed as exc:
            log.warning("request %d not delivered, the next run tries again: %s", request_id, exc,
                        extra={"REQUEST_ID": request_id})
            with self.recording:
                self.outcome.failed.append(str(exc))
            return
        # Recorded at once, one delivery at a time: no entry is lost or doubled by a
        # delivery finishing alongside.
        with self.recording:
            self.entries.setdefault(request_id, Entry(request_id, request.completion)).delivered(
                request.completion, request.fingerprint, now(), copy
            )
            self.store.save(self.entries)
            self.outcome.delivered.append(request_id)
        self._log_delivery(channel, request, reason, copy.size, time.monotonic() - started)
        checkpoint("delivered")

    def remove_all(self, gone: tuple[int, ...], elsewhere: tuple[int, ...], tag: str) -> None:
        """Removes the files of requests gone from the broker; for those delivered to an earlier
        destination (`elsewhere`) only the removal is recorded: this destination never had
        their file, and whatever is there under that name is somebody else's."""
        for request_id in sorted((*gone, *elsewhere)):
            entry = self.entries[request_id]
            path = self.remote.path(result_name(request_id))
            why = self.broker.why_unlisted(request_id, tag)
            if why is None:
                log.warning(
                    "request %d is missing from the broker's tagged listing but still exists with the tag "
                    "(its definition may not parse on the broker); its file is kept", request_id,
                    extra={"REQUEST_ID": request_id, "REMOTE_PATH": path},
                )
                continue
            if request_id in elsewhere:
                assert entry.copy is not None
                path = f"{entry.copy.destination}/{result_name(request_id)}"
                note = "; its file at that earlier destination is left as it is, nothing was removed"
            else:
                note = "" if self.remote.remove(result_name(request_id)) else "; the file was already absent"
            entry.removed(now())
            self.store.save(self.entries)
            self.outcome.removed.append(request_id)
            log.info(
                "removed request %d: %s (%s%s)", request_id, path, why, note,
                extra={"MESSAGE_ID": events.REMOVED, "REQUEST_ID": request_id, "REMOTE_PATH": path},
            )

    def publish_status(self) -> None:
        # Saved (if it differs) before the upload, so that the uploaded file is ours: a first run
        # has none yet, and a damaged one recovered from status.xml.prev must not travel.
        self.store.save(self.entries)
        self.remote.upload(self.store.path, STATUS_NAME)

    def _log_delivery(self, channel: Remote, request: Observed, reason: Reason, size: int, seconds: float) -> None:
        first = reason is Reason.NEW
        path = channel.path(result_name(request.id))
        log.info(
            "%s request %d (%s, completion %s): %s, %d bytes in %.1f s",
            "delivered" if first else "re-delivered", request.id, reason.value, request.completion, path, size, seconds,
            extra={
                "MESSAGE_ID": events.DELIVERED if first else events.REDELIVERED,
                "REQUEST_ID": request.id,
                "REMOTE_PATH": path,
                "BYTES": size,
                "DURATION_SECONDS": f"{seconds:.3f}",
            },
        )


def _finish(outcome: Outcome, plan: Plan, max_delete: int) -> Outcome:
    """Step 7: exit 0 only when everything succeeded."""
    failed = list(outcome.failed)
    if plan.held_back:
        failed.append(
            f"{len(plan.held_back)} requests are gone from the broker listing (ids {shown_ids(plan.held_back)}), "
            f"more than [state] max_delete = {max_delete}; nothing was removed. If that is intended, "
            "raise max_delete for one run"
        )
    if failed:
        raise SyncError("; ".join(failed))
    log.info(
        "run finished: %d delivered, %d removed, %d unchanged",
        len(outcome.delivered), len(outcome.removed), len(plan.unchanged),
        extra={"MESSAGE_ID": events.RUN_FINISHED},
    )
    return outcome


def _show_plan(plan: Plan, unreadable: dict[int, RequestFailed], show: Callable[[str], None]) -> None:
    for request_id, failure in unreadable.items():
        show(f"would leave request {request_id} as it is: {failure}")
    for request_id, reason in plan.deliver:
        show(f"would deliver request {request_id} ({reason.value}) as {result_name(request_id)}")
    for request_id in plan.remove:
        show(f"would remove request {request_id}: {result_name(request_id)}")
    for request_id in plan.forget:
        show(f"would record request {request_id} as removed; its file at an earlier destination is left as it is")
    if plan.held_back:
        show(f"would refuse to remove {len(plan.held_back)} requests ({shown_ids(plan.held_back)}): more than max_delete")
    show(f"{len(plan.unchanged)} unchanged; dry run, nothing was changed")


def prepare(state_dir: Path) -> None:
    """Makes sure this user can keep its state in `state_dir` before anything is fetched."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(state_dir, f"cannot be created ({exc.strerror})") from None
    owner = state_dir.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        # Files root wrote there would lock the service's own user out of its state.
        name = pwd.getpwuid(owner).pw_name
        raise SyncError(
            f"{state_dir} belongs to {name}: run as that user ('runuser -u {name} -- aktin-broker-sftp …') "
            "or with 'systemctl start aktin-broker-sftp.service'"
        )
    if not os.access(state_dir, os.W_OK):
        raise _unwritable(state_dir, "is read-only here")


def _unwritable(state_dir: Path, problem: str) -> ConfigError:
    # The usual cause: an upstream config whose WORKING_DIR the hardened unit cannot write.
    # Under the unit, systemd names the one directory it may write (StateDirectory=).
    writable = os.environ.get("STATE_DIRECTORY", str(DEFAULT_STATE_DIR))
    return ConfigError(
        f"state directory {state_dir} {problem}; the systemd unit lets the service write only "
        f"{writable}: set [state] directory (MISC.WORKING_DIR in an upstream config) to it, "
        "and take an old status.xml along with 'aktin-broker-sftp import OLD/status.xml'"
    )


def lock_path(state_dir: Path) -> Path:
    return state_dir / "lock"


@contextmanager
def locked_state(state_dir: Path) -> Iterator[StatusFile]:
    """The state, for a command that reads and changes it while no run (or other command) does."""
    prepare(state_dir)
    with exclusive(lock_path(state_dir)):
        yield StatusFile(state_dir / STATUS_NAME)


def _drop_leftovers(state_dir: Path) -> None:
    """Downloads and tokens of an interrupted run are dropped; their requests are still due.
    Only files under our own names go: the state directory may be an operator's folder."""
    for path in state_dir.iterdir():
        if _LEFTOVER.fullmatch(path.name) and path.is_file():
            path.unlink()


def shown_ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (", …" if len(ids) > 10 else "")
