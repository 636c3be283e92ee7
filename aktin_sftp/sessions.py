"""HTTP(S) to the broker with requests: one Session per thread, each on one keep-alive
connection, the retries that are safe, and a bound on every call.

Nothing from the environment (proxies, CA variables, netrc) is consulted, and redirects are never
followed: the config alone decides where the API key goes.

requests' timeout bounds each socket read only, so a broker that trickles its answer (a byte
every few seconds) would hold a call for days. Here every call is watched: its answer must begin
within the timeout, and each further CHUNK of it must arrive within the timeout too (in curl's
terms, a speed limit of CHUNK bytes per timeout); otherwise the connection is cut underneath it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from aktin_sftp.watchdog import Watch, Watchdog, cut

# Answers worth another try: a proxy in front of a restarting broker, or an overloaded one.
RETRY_STATUSES = (502, 503, 504)
# What must arrive within one timeout once an answer has begun.
CHUNK = 64 << 10
# Calls that may be sent twice: the export POST may not (two bundles of one request at once,
# and broker 1.5.1 fails a download that meets an export).
REPEATABLE = frozenset({"GET", "HEAD"})


class TooLarge(requests.RequestException):
    """An answer longer than the caller's limit; it is not read any further."""


class CutShort(requests.RequestException):
    """An answer whose body ended before its Content-Length (urllib3 1.26 does not say so itself)."""


class Stalled(requests.RequestException):
    """The broker sent nothing, or less than CHUNK bytes, for a whole timeout; the call was cut."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _Link:
    """A thread's one connection to the broker, as far as its watchdog needs to know it."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.watch: Watch | None = None


_here = threading.local()


def _opened(sock: socket.socket) -> socket.socket:
    """Called in the calling thread for every new connection, once it can be cut (for TLS, after
    the handshake, which Python bounds itself): a new connection (a retry) begins a new wait."""
    link: _Link | None = getattr(_here, "link", None)
    if link is not None:
        link.sock = sock
        if link.watch is not None:
            link.watch.moved()
            # A cut was of an earlier connection: what this one brings is not a stall.
            link.watch.expired = False
    return sock


class _Connection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _opened(super()._new_conn())


class _TlsConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        # The TLS socket: wrapping detached the one `_new_conn` made, and shutting that one down
        # would reach nothing. The handshake before needs no cut: Python bounds it as a whole by
        # the socket's timeout.
        _opened(self.sock)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


class _Adapter(HTTPAdapter):
    """requests' adapter with connections whose sockets the watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}


class _Retry(Retry):
    """A connect that timed out is not tried again: it has waited a whole timeout already, and
    three more would hold the call four times as long. (urllib3's NewConnectionError, a refused
    or unroutable connect, derives from ConnectTimeoutError; that one is tried again.)"""

    def increment(
        self, method: str | None = None, url: str | None = None, response: Any = None, error: Exception | None = None,
        _pool: Any = None, _stacktrace: Any = None,
    ) -> _Retry:
        if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
            raise MaxRetryError(_pool, url, error)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def retry_policy() -> Retry:
    return _Retry(
        total=None,
        # A failed connect (nothing was sent) three more times after 0, 1 and 2 s, unless it
        # timed out (_Retry); so is a 502/503/504 to a call that may be repeated.
        connect=3,
        status=3,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=0.5,
        # A GET that was sent but failed once more, on a new connection: the server may have
        # closed a kept-alive one meanwhile. Only once, as a timed-out call waits the whole
        # timeout each time.
        read=1,
        # TLS failures and the like are not passing troubles.
        other=0,
        allowed_methods=REPEATABLE,
        # The last 5xx answer is returned, so that the caller can name it.
        raise_on_status=False,
        # A long Retry-After would stall the hourly run; the back-off above is enough.
        respect_retry_after_header=False,
    )


class Streamed:
    """An answer whose body is still to be read, in chunks, each within the timeout."""

    def __init__(self, response: requests.Response, watch: Watch) -> None:
        self.response = response
        self.watch = watch
        self.status_code = response.status_code
        self.headers = response.headers
        # The answer has begun: its first CHUNK has a timeout of its own.
        watch.moved()

    def chunks(self) -> Iterator[bytes]:
        stalled = Stalled(f"less than {CHUNK >> 10} KiB arrived within {self.watch.limit:g} s")
        arrived = 0
        try:
            # A chunked answer comes in pieces as small as the broker sends them: progress is
            # counted in bytes, not pieces.
            for chunk in self.response.iter_content(CHUNK):
                arrived += len(chunk)
                if arrived >= CHUNK:
                    self.watch.moved()
                    arrived %= CHUNK
                yield chunk
        except requests.RequestException:
            if self.watch.expired:
                raise stalled from None
            raise
        # A cut can also look like the end of an answer that has no Content-Length.
        if self.watch.expired:
            raise stalled


def retry_cause(exc: requests.RequestException) -> Exception | None:
    """urllib3's reason for the last try, where requests kept it: requests names a read timeout
    that outlived its retry, and a connect that failed, both a ConnectionError."""
    return exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None


def _never_connected(exc: requests.RequestException) -> bool:
    """Whether the last try failed to connect: then the watchdog, which may have expired during
    the retries' back-off, cut nothing of it, and the connect failure itself is the reason."""
    return isinstance(retry_cause(exc), ConnectTimeoutError)


class Sessions:
    def __init__(self, url: str, timeout: float, ca_bundle: Path | None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Verified always, against the configured CA or else the system's (Debian's
        # python3-certifi is the system store).
        self.verify: str | bool = str(ca_bundle) if ca_bundle else True
        self.local = threading.local()
        self.opened: list[requests.Session] = []
        self.lock = threading.Lock()
        self.watchdog = Watchdog(f"watchdog {self.url}")

    def call(self, method: str, path: str, headers: dict[str, str], limit: int) -> Answer:
        """The whole answer; TooLarge if its body is longer than `limit` bytes."""
        with self.stream(method, path, headers) as response:
            promised = response.headers.get("Content-Length", "")
            if promised.isdigit() and int(promised) > limit:
                raise TooLarge(f"an answer longer than {limit >> 20} MiB")
            body = bytearray()
            for chunk in response.chunks():
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"an answer longer than {limit >> 20} MiB")
            if promised.isdigit() and int(promised) != len(body):
                raise CutShort(f"the answer broke off after {len(body)} of {promised} bytes")
            return Answer(response.status_code, response.headers, bytes(body))

    @contextmanager
    def stream(self, method: str, path: str, headers: dict[str, str]) -> Iterator[Streamed]:
        """The answer with its body still to read, watched until the block ends."""
        session, link = self._session()
        # urllib3 reports the connections it opens in this thread to this call's link.
        _here.link = link
        with self.watchdog.watch(f"{method} {path}", self.timeout, lambda: cut(link.sock)) as watch:
            link.watch = watch
            try:
                try:
                    response = session.request(
                        method, self.url + path, headers=headers, timeout=self.timeout, verify=self.verify,
                        allow_redirects=False, stream=True,
                    )
                except requests.RequestException as exc:
                    if watch.expired and not _never_connected(exc):
                        raise Stalled(f"no answer began within {self.timeout:g} s") from None
                    raise
                with response:
                    yield Streamed(response, watch)
            finally:
                link.watch = None

    def close(self) -> None:
        with self.lock:
            for session in self.opened:
                session.close()
        self.watchdog.close()

    def _session(self) -> tuple[requests.Session, _Link]:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            # Content-Length then counts the bytes that arrive, and a cut-short answer shows.
            session.headers["Accept-Encoding"] = "identity"
            adapter = _Adapter(pool_connections=1, pool_maxsize=1, max_retries=retry_policy())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self.local.session = session
            self.local.link = _Link()
            with self.lock:
                self.opened.append(session)
        return session, self.local.link
