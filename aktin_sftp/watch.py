"""The listener (`aktin-broker-sftp watch`): the broker's events turned into delivery runs.

It delivers nothing itself. After an event about a request, and once no further one came for
`[watch] quiet_seconds` (or `max_delay_seconds` after the first), it creates the trigger file;
systemd's aktin-broker-sftp.path sees it and starts aktin-broker-sftp.service, whose start
removes it again: every delivery is the same oneshot run, with its lock, journal and exit codes.
A trigger made while a run is going on stays, so systemd starts one more run after it.

The broker replays nothing, so every (re)connect counts as an event too: the run it leads to
catches up on what happened meanwhile. The timer stays the safety net.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aktin_sftp import events
from aktin_sftp.broker import Broker, KeyRefused
from aktin_sftp.broker_events import AdminEvents, Lost, NoWebsocket
from aktin_sftp.config import Config
from aktin_sftp.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

DEFAULT_TRIGGER = Path("/run/aktin-broker-sftp/trigger")
# The broker's messages that say something happened to a request (`resource` is a node's file).
REQUEST_EVENTS = frozenset({"created", "published", "closed", "status", "result"})
# The loop looks at the clock, the trigger and systemd's watchdog at least this often.
TICK = 1.0
# Reconnecting: first after RETRY_FIRST seconds, doubling up to RETRY_LONGEST; a broker without
# the websocket is asked again only every NO_WEBSOCKET_RETRY seconds.
RETRY_FIRST = 1.0
RETRY_LONGEST = 60.0
NO_WEBSOCKET_RETRY = 600.0


@dataclass
class Pending:
    """Events not yet followed by a run: due `quiet` seconds after the last one, and at most
    `longest` seconds after the first."""

    quiet: float
    longest: float
    first: float | None = None
    last: float = 0.0
    count: int = 0

    def note(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def due_at(self) -> float | None:
        return None if self.first is None else min(self.last + self.quiet, self.first + self.longest)

    def take(self, now: float) -> int:
        """How many events the run now due stands for (0: none is due); forgets them."""
        due = self.due_at()
        if due is None or now < due:
            return 0
        count = self.count
        self.first, self.count = None, 0
        return count


def is_request_event(message: str) -> bool:
    return message.split(" ", 1)[0] in REQUEST_EVENTS


def watch(config: Config, trigger: Path) -> None:
    """Listens until interrupted (SIGTERM, SIGINT: KeyboardInterrupt, which also ends a wait in
    progress). A config error ends it (ConfigError) when it has never listened yet, and a refused
    API key always; whatever else the broker does (restarts, closes, stalls, answers nothing, a
    proxy's 404 while it restarts) is met by connecting again."""
    _usable(trigger)
    pending = Pending(config.watch.quiet, config.watch.max_delay)
    outage = _Outage()
    notify("READY=1")
    while True:
        began = time.monotonic()
        try:
            _listen(config, pending, trigger, outage)
        except NoWebsocket as exc:
            pause = outage.no_websocket(exc)
        except KeyRefused:
            raise
        except ConfigError as exc:
            if not outage.listened:
                raise
            pause = outage.lost(Lost(str(exc)), time.monotonic() - began)
        except UnavailableError as exc:
            pause = outage.lost(exc, time.monotonic() - began)
        _wait(pause, pending, trigger)


def _listen(config: Config, pending: Pending, trigger: Path, outage: _Outage) -> None:
    """Until the connection is lost (Lost)."""
    # The REST API says clearly what the handshake does not: whether the key is an admin key.
    with Broker(config.broker) as broker:
        broker.tagged_request_ids(config.broker.tag)
    with AdminEvents(config.broker) as admin:
        outage.over(admin.url)
        # What happened while nobody listened is caught up on by a run.
        pending.note(time.monotonic())
        while True:
            notify("WATCHDOG=1")
            due = pending.due_at()
            message = admin.next(TICK if due is None else min(TICK, max(0.0, due - time.monotonic())))
            if message is not None and is_request_event(message):
                log.debug("broker event: %s", message[:200])
                pending.note(time.monotonic())
            _trigger_if_due(pending, trigger)


def _wait(seconds: float, pending: Pending, trigger: Path) -> None:
    """Between connections: events noted before the connection was lost still get their run."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        notify("WATCHDOG=1")
        _trigger_if_due(pending, trigger)
        time.sleep(min(TICK, max(0.0, until - time.monotonic())))


def _usable(trigger: Path) -> None:
    """Said at the start rather than when the first run is due."""
    if not trigger.parent.is_dir() or not os.access(trigger.parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--trigger {trigger}: its folder does not exist or is not writable by this user (under systemd, "
            "the listener's unit makes /run/aktin-broker-sftp)"
        )


def _trigger_if_due(pending: Pending, trigger: Path) -> None:
    count = pending.take(time.monotonic())
    if not count:
        return
    # A trigger still there is a run systemd has yet to start: nothing to add. Never through
    # a link, and never over anything else's file.
    try:
        os.close(os.open(trigger, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass
    log.info("delivery run requested (%d events since the last request)", count, extra={"MESSAGE_ID": events.RUN_REQUESTED})


class _Outage:
    """Logs a lost connection once (not every attempt) and spaces the attempts out."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.retry = RETRY_FIRST
        self.told_no_websocket = False
        self.listened = False

    def lost(self, exc: Exception, lasted: float) -> float:
        if self.since is None:
            log.warning("%s; listening again as soon as the broker answers (the timer still runs)", exc,
                        extra={"MESSAGE_ID": events.LISTENER_LOST})
            notify("STATUS=connecting to the broker again")
            self.since = time.monotonic()
        else:
            log.debug("%s", exc)
        # A connection that lasted was no flapping one: the next attempt comes at once.
        if lasted > RETRY_LONGEST:
            self.retry = RETRY_FIRST
        pause, self.retry = self.retry, min(2 * self.retry, RETRY_LONGEST)
        return pause

    def no_websocket(self, exc: Exception) -> float:
        if not self.told_no_websocket:
            log.warning("%s: deliveries start by the timer only; asked again every %.0f min", exc, NO_WEBSOCKET_RETRY / 60)
            notify("STATUS=the broker has no admin websocket: deliveries by the timer only")
            self.told_no_websocket = True
        return NO_WEBSOCKET_RETRY

    def over(self, url: str) -> None:
        after = f" (again, after {time.monotonic() - self.since:.0f} s)" if self.since is not None else ""
        log.info("listening to the broker's events at %s%s", url, after)
        notify(f"STATUS=listening to {url}")
        self.since, self.told_no_websocket, self.listened = None, False, True


def notify(state: str) -> None:
    """Tells systemd (Type=notify, WatchdogSec=) how the listener is; nothing outside systemd."""
    if "NOTIFY_SOCKET" not in os.environ:
        return
    from systemd import daemon  # type: ignore[import-not-found, attr-defined, unused-ignore]

    daemon.notify(state)
