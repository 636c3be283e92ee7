"""HTTP(S) to one server over keep-alive connections, one per thread, with the retries that
every broker call here can take (each is safe to repeat: an export only builds a new zip).

The standard library's http.client rather than requests or urllib3: a run makes one status
call per tagged request, and their per-call work cost more CPU than the calls themselves
(BENCHMARKS.md). Nothing from the environment (proxies, CA variables) is consulted, and
redirects are never followed: the config alone decides where the API key goes.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Answers worth another try: a proxy in front of a restarting broker, or an overloaded one.
RETRY_STATUSES = (502, 503, 504)
# Seconds to wait before the second, third and fourth try of a failed connect or such an answer.
PAUSES = (0.0, 1.0, 2.0)


class TooLarge(http.client.HTTPException):
    """An answer longer than the caller's limit; it is not read any further."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes


class Connections:
    def __init__(self, url: str, timeout: float, ca_bundle: Path | None) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        # Verified always, against the configured CA or else the system's.
        self.context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None) if self.https else None
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def call(self, method: str, path: str, headers: dict[str, str], limit: int) -> Answer:
        """The whole answer, after retries; TooLarge if its body is longer than `limit`."""
        _, response, body = self._exchange(method, path, headers, limit)
        return Answer(response.status, response.msg, body)

    @contextmanager
    def stream(self, method: str, path: str, headers: dict[str, str]) -> Iterator[http.client.HTTPResponse]:
        """The answer with its body still to read; a body not read to its end closes the
        connection, since its unread bytes would spoil the next call."""
        connection, response, _ = self._exchange(method, path, headers, None)
        try:
            yield response
        finally:
            if not response.isclosed():
                connection.close()

    def close(self) -> None:
        with self.lock:
            for connection in self.opened:
                connection.close()

    def _exchange(
        self, method: str, path: str, headers: dict[str, str], limit: int | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, bytes]:
        """With a `limit`, the body is read too, up to one byte more than that."""
        # A call that was sent but failed is tried once more on a new connection: the server may
        # have closed a kept-alive one meanwhile. Only once, as a timed-out call waits the whole
        # timeout each time (the broker may be building a large bundle).
        sent_again = False
        attempt = 0
        while True:
            attempt += 1
            last = attempt > len(PAUSES)
            connection = self._connection()
            if connection.sock is None:
                try:
                    connection.connect()
                except ssl.SSLError:
                    connection.close()
                    raise
                except OSError as exc:
                    connection.close()
                    if last:
                        raise
                    log.debug("connecting to %s failed (%s); trying again", self.host, exc)
                    time.sleep(PAUSES[attempt - 1])
                    continue
            try:
                connection.request(method, self.prefix + path, headers=headers)
                response = connection.getresponse()
                if limit is not None:
                    body = _read_at_most(response, limit)
                elif response.status in RETRY_STATUSES:
                    body = response.read()
                else:
                    body = b""
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if last or sent_again or isinstance(exc, TooLarge):
                    raise
                log.debug("%s %s failed (%r); trying again on a new connection", method, path, exc)
                sent_again = True
                continue
            if response.status in RETRY_STATUSES and not last:
                log.debug("%s %s answered HTTP %d; trying again", method, path, response.status)
                time.sleep(PAUSES[attempt - 1])
                continue
            return connection, response, body

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self.local, "connection", None)
        if connection is None:
            if self.https:
                connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.connection = connection
            with self.lock:
                self.opened.append(connection)
        return connection


def _read_at_most(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The body, if it is no longer than `limit`; a promised length beyond it is refused before
    anything is read, and an answer cut short raises IncompleteRead."""
    if response.length is not None:
        if response.length > limit:
            raise TooLarge(f"an answer longer than {limit >> 20} MiB")
        return response.read()
    body = response.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"an answer longer than {limit >> 20} MiB")
    return body
