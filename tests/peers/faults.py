"""Fault injection in front of the real broker: an HTTP proxy that answers or cuts chosen calls.
Everything it does not break is answered by the broker behind it. (Before sshd, Toxiproxy does
the same for TCP: tests/peers/toxiproxy.py.)"""

from __future__ import annotations

import http.client
import re
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.peers.http_server import LocalHttpServer


@dataclass
class Rule:
    """For requests whose method and path match: answer `status` with `body` (and `headers`), or
    forward and cut the answer to `truncate` bytes (with `length=False`, an answer that gives
    no Content-Length and ends when the connection closes), or forward after `delay` seconds."""

    method: str
    path: str
    status: int | None = None
    body: bytes = b""
    truncate: int | None = None
    delay: float = 0.0
    content_type: str = "application/xml"
    headers: tuple[tuple[str, str], ...] = ()
    times: int = 1_000_000
    length: bool = True

    def take(self, method: str, path: str) -> bool:
        if self.method != method or not re.search(self.path, path) or self.times <= 0:
            return False
        self.times -= 1
        return True


class BrokerProxy:
    """With `tls` (certificate and key files) it serves HTTPS, as a reverse proxy would."""

    def __init__(self, broker_port: int, tls: tuple[Path, Path] | None = None) -> None:
        self.rules: list[Rule] = []
        self.seen: list[str] = []
        # When each call arrived (time.monotonic()), in the order of `seen`.
        self.arrived: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.arrived.append(time.monotonic())
                proxy.seen.append(f"{self.command} {self.path}")
                rule = next((r for r in proxy.rules if r.take(self.command, self.path)), None)
                if rule and rule.delay:
                    time.sleep(rule.delay)
                if rule and rule.status is not None:
                    self.answer(rule.status, rule.body, rule.content_type, list(rule.headers))
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", broker_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                content_type = response.getheader("Content-Type") or ""
                self.answer(
                    response.status, data, content_type, response.getheaders(), rule.truncate if rule else None,
                    rule.length if rule else True,
                )

            def answer(
                self, status: int, data: bytes, content_type: str, headers: list[tuple[str, str]] | None = None,
                cut: int | None = None, length: bool = True,
            ) -> None:
                """With `cut`: promise the whole answer, send that much of it, and hang up."""
                self.send_response(status)
                for key, value in headers or []:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "content-type"):
                        self.send_header(key, value)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if length:
                    self.send_header("Content-Length", str(len(data)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[:cut])
                if cut is not None or not length:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

        self.http = LocalHttpServer(Handler, tls)
        self.url = self.http.url

    def stop(self) -> None:
        self.http.stop()
