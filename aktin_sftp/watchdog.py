"""Bounds for waits that the libraries leave unbounded.

paramiko and requests bound single socket reads at best: a peer that stops answering on an open
connection, answers a byte at a time or never grants window space can hold a call for hours. A
watchdog thread sees every wait in progress and, once one has made no progress for its limit,
cuts the connection underneath it (`socket.shutdown`), which wakes the waiting thread with an
error whatever it was blocked in. The adapters (`sftp`, `sessions`) say what counts as progress.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How often waits are looked at: a wait ends at most this much later than its limit.
TICK = 0.1


class Watch:
    """One wait in progress; `moved()` says it made progress."""

    def __init__(self, what: str, limit: float, cut: Callable[[], None]) -> None:
        self.what = what
        self.limit = limit
        self.cut = cut
        self.last = time.monotonic()
        # Whether it was cut. It stays watched, as a library may retry on a new connection;
        # an adapter that sees the new connection clears this.
        self.expired = False

    def moved(self) -> None:
        self.last = time.monotonic()


class Watchdog:
    """One thread for the waits of one connection (or one pool of them); `close()` ends it."""

    def __init__(self, name: str) -> None:
        self.watches: set[Watch] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    @contextmanager
    def watch(self, what: str, limit: float, cut: Callable[[], None]) -> Iterator[Watch]:
        watch = Watch(what, limit, cut)
        with self.lock:
            self.watches.add(watch)
        try:
            yield watch
        finally:
            with self.lock:
                self.watches.discard(watch)

    def busy(self) -> bool:
        with self.lock:
            return bool(self.watches)

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not threading.current_thread():
            self.thread.join()

    def _loop(self) -> None:
        while not self.stopping.wait(TICK):
            now = time.monotonic()
            with self.lock:
                due = [w for w in self.watches if now - w.last > w.limit]
                for watch in due:
                    watch.expired = True
                    watch.last = now
            for watch in due:
                watch.cut()


def cut(sock: socket.socket | None) -> None:
    """Ends every wait on `sock` at once: blocked reads see the end of the stream, blocked
    writes an error. Closing the descriptor instead could hand its number to another file."""
    if sock is None:
        return
    try:
        # Past TLS to the TCP connection underneath (ssl.SSLSocket.shutdown would first drop
        # the TLS state that a blocked read is using).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        # Already shut or never connected: nothing is waiting on it any more.
        pass
