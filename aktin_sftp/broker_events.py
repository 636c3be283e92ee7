"""The broker's admin websocket (`/broker/websocket`): one text message per event, such as
`result 12 3 application/zip` when node 3 submitted a result to request 12.

websocket-client speaks the protocol; this adapter bounds every wait on it, as `sessions` does for
the REST calls. The TCP connection (and TLS) is made here, so that nothing from the environment
(proxies) decides where the API key goes and the watchdog can cut the connection underneath a
wait: the handshake must be done within `[broker] timeout`, and once open, a broker that sends
nothing for half the timeout is asked `ping N` (the broker answers `pong N`); without any message
within the timeout after that, the connection counts as lost.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import websocket

from aktin_sftp.broker import KeyRefused
from aktin_sftp.config import BrokerConfig
from aktin_sftp.errors import ConfigError, UnavailableError
from aktin_sftp.watchdog import Watchdog, cut

PATH = "/broker/websocket"


class Lost(UnavailableError):
    """The websocket could not be opened, or it ended or went quiet; try again later."""


class NoWebsocket(Lost):
    """The broker answered the handshake with 404: it has no admin websocket."""


def websocket_url(broker_url: str) -> str:
    parts = urlsplit(broker_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{PATH}"


class AdminEvents:
    """One open admin websocket; `next()` gives its messages, `close()` ends it."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.url = websocket_url(config.url)
        self.timeout = config.timeout
        self.stack = ExitStack()
        self.watchdog = Watchdog("broker-websocket-watchdog")
        self.stack.callback(self.watchdog.close)
        self.sock: socket.socket | None = None
        self.ws = websocket.WebSocket(skip_utf8_validation=True)
        self.pings = 0
        self.asked = False
        opened = False
        try:
            self._open()
            opened = True
        finally:
            if not opened:
                self.close()
        self.heard = time.monotonic()
        # From now on a whole message (an event, a pong) must come at least every 1.5 timeouts:
        # the ping goes out after half a timeout of silence, its answer may take one timeout.
        self.alive = self.stack.enter_context(
            self.watchdog.watch("websocket", 1.5 * self.timeout, lambda: cut(self.sock))
        )

    def __enter__(self) -> AdminEvents:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open(self) -> None:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        what = f"the admin websocket of the broker at {self.config.url}"
        with self.watchdog.watch("handshake", self.timeout, lambda: cut(self.sock)) as handshake:
            try:
                raw = socket.create_connection((host, port), timeout=self.timeout)
                self.sock = raw
                if parts.scheme == "wss":
                    context = ssl.create_default_context(
                        cafile=str(self.config.ca_bundle) if self.config.ca_bundle else None
                    )
                    self.sock = context.wrap_socket(raw, server_hostname=host)
                self.ws.connect(  # type: ignore[no-untyped-call, unused-ignore]
                    self.url, socket=self.sock, timeout=self.timeout, redirect_limit=0, suppress_origin=True,
                    header=[f"Authorization: Bearer {self.config.api_key.reveal()}"],
                )
            except websocket.WebSocketBadStatusException as exc:
                status = exc.status_code
                if status == 404:
                    raise NoWebsocket(f"{what} does not exist (HTTP 404 at {PATH})") from None
                if status in (401, 403):
                    raise KeyRefused(
                        f"broker refused the API key (HTTP {status}) for {what}; [broker] api_key must be an admin key"
                    ) from None
                raise Lost(f"{what} refused the connection (HTTP {status})") from None
            except (OSError, websocket.WebSocketException) as exc:
                if handshake.expired:
                    raise Lost(f"{what} did not open within [broker] timeout = {self.timeout:g} s") from None
                raise Lost(f"{what} could not be opened: {_reason(exc)}") from None
            status = self.ws.handshake_response.status if self.ws.handshake_response else 0
            if status != 101:
                # Not followed: a redirect could carry the API key to another host.
                raise ConfigError(f"broker answered the handshake of {what} with HTTP {status}; check [broker] url")

    def next(self, wait: float) -> str | None:
        """The next text message within `wait` seconds, or None. Raises Lost when the broker
        closed the websocket, the connection broke, or the broker stopped answering."""
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if not self.asked and now - self.heard >= self.timeout / 2:
                self._send(f"ping {self.pings}")
                self.pings += 1
                self.asked = True
            until = deadline if self.asked else min(deadline, self.heard + self.timeout / 2)
            if not self._readable(max(0.0, until - now)):
                if time.monotonic() >= deadline:
                    return None
                continue
            opcode, data = self._receive()
            self.heard = time.monotonic()
            self.asked = False
            self.alive.moved()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise Lost(f"the broker closed its admin websocket ({_close_reason(data)})")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            text = data.decode("utf-8", "replace")
            if not text.startswith("pong "):
                return text

    def _readable(self, wait: float) -> bool:
        assert self.sock is not None
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from None
        return bool(readable)

    def _receive(self) -> tuple[int, bytes]:
        try:
            opcode, data = self.ws.recv_data(control_frame=True)
        except (OSError, websocket.WebSocketException) as exc:
            raise self._lost(exc) from None
        return opcode, data if isinstance(data, bytes) else data.encode()

    def _send(self, text: str) -> None:
        try:
            self.ws.send(text)
        except (OSError, websocket.WebSocketException) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: Exception) -> Lost:
        if self.alive.expired:
            return Lost(
                f"the broker's admin websocket went quiet: no answer to a ping within [broker] timeout = "
                f"{self.timeout:g} s"
            )
        return Lost(f"the broker's admin websocket broke off: {_reason(exc)}")

    def close(self) -> None:
        """Drops the connection at once: nothing that could wait on the broker is sent. The
        watchdog goes first, so that it cannot cut a descriptor number the close freed."""
        self.stack.close()
        cut(self.sock)
        if self.sock is not None:
            self.sock.close()


def _close_reason(data: bytes) -> str:
    if len(data) < 2:
        return "no close code"
    code = int.from_bytes(data[:2], "big")
    reason = data[2:].decode("utf-8", "replace").strip()
    return f"close code {code}" + (f": {reason[:200]}" if reason else "")


def _reason(exc: Exception) -> str:
    return type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
