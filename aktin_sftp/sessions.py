"""HTTP(S) to the broker with requests: one Session per thread, each on one keep-alive
connection, and the retries every broker call here can take (each is safe to repeat: an export
only builds a new zip).

Nothing from the environment (proxies, CA variables, netrc) is consulted, and redirects are never
followed: the config alone decides where the API key goes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

# Answers worth another try: a proxy in front of a restarting broker, or an overloaded one.
RETRY_STATUSES = (502, 503, 504)


class TooLarge(requests.RequestException):
    """An answer longer than the caller's limit; it is not read any further."""


class CutShort(requests.RequestException):
    """An answer whose body ended before its Content-Length (urllib3 1.26 does not say so itself)."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def retry_policy() -> Retry:
    return Retry(
        total=None,
        # A failed connect, or a 502/503/504, three more times after 0, 1 and 2 s.
        connect=3,
        status=3,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=0.5,
        # A call that was sent but failed once more, on a new connection: the server may have
        # closed a kept-alive one meanwhile. Only once, as a timed-out call waits the whole
        # timeout each time (the broker may be building a large bundle).
        read=1,
        # TLS failures and the like are not passing troubles.
        other=0,
        # Every call is safe to repeat, the export POST included.
        allowed_methods=None,
        # The last 5xx answer is returned, so that the caller can name it.
        raise_on_status=False,
        # A long Retry-After would stall the hourly run; the back-off above is enough.
        respect_retry_after_header=False,
    )


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

    def call(self, method: str, path: str, headers: dict[str, str], limit: int) -> Answer:
        """The whole answer; TooLarge if its body is longer than `limit` bytes."""
        with self.stream(method, path, headers) as response:
            promised = response.headers.get("Content-Length", "")
            if promised.isdigit() and int(promised) > limit:
                raise TooLarge(f"an answer longer than {limit >> 20} MiB")
            body = bytearray()
            for chunk in response.iter_content(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"an answer longer than {limit >> 20} MiB")
            if promised.isdigit() and int(promised) != len(body):
                raise CutShort(f"the answer broke off after {len(body)} of {promised} bytes")
            return Answer(response.status_code, response.headers, bytes(body))

    def stream(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        """The answer with its body still to read; close it when done."""
        return self._session().request(
            method, self.url + path, headers=headers, timeout=self.timeout, verify=self.verify,
            allow_redirects=False, stream=True,
        )

    def close(self) -> None:
        with self.lock:
            for session in self.opened:
                session.close()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            # Content-Length then counts the bytes that arrive, and a cut-short answer shows.
            session.headers["Accept-Encoding"] = "identity"
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=retry_policy())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self.local.session = session
            with self.lock:
                self.opened.append(session)
        return session
