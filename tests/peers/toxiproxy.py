"""Toxiproxy (github.com/Shopify/toxiproxy), the usual TCP fault and latency proxy, in front of
sshd: an emulated WAN for the benchmark and the tests, and connections cut after N bytes.

`make toxiproxy` installs the pinned server with `go install` into the cache outside the clone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.peers import free_port, stop, wait_for_port
from tests.peers.broker import CACHE

VERSION = "v2.7.0"
BINARY = CACHE / f"toxiproxy-{VERSION}" / "server"
# The WAN between a broker server and a recipient such as the RKI: 25 ms each way, 100 Mbit/s.
WAN_LATENCY_MS = 25
WAN_RATE_KB = 100_000_000 // 8 // 1000


class Toxiproxy:
    def __init__(self, directory: Path) -> None:
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: 'make toxiproxy' (part of 'make test') installs it")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "toxiproxy.log", "wb")
        self.process = subprocess.Popen(
            [str(BINARY), "-host", "127.0.0.1", "-port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = requests.Session()
        self.http.trust_env = False
        try:
            wait_for_port(self.port, 20)
        except RuntimeError:
            self.stop()
            raise

    def proxy(self, name: str, upstream_port: int) -> int:
        """A new proxy to 127.0.0.1:`upstream_port`; returns the port it listens on."""
        port = free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{upstream_port}"})
        wait_for_port(port, 10)
        return port

    def toxic(self, proxy: str, kind: str, stream: str, **attributes: int) -> None:
        self._call("POST", f"/proxies/{proxy}/toxics", {
            "name": f"{kind}-{stream}", "type": kind, "stream": stream, "attributes": attributes,
        })

    def enable(self, proxy: str, enabled: bool) -> None:
        """A disabled proxy refuses new connections and closes those it has."""
        self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def heal(self, proxy: str) -> None:
        """The proxy again as new: same name and ports, enabled, without toxics.

        Removing a toxic waits on every connection still passing through it, and a slicer that
        was feeding a client which has gone away can hold that removal for 5 s per buffered
        chunk (Toxiproxy's `RemoveToxic`): the proxy is replaced instead, which only closes them.
        """
        answer = self.http.get(f"{self.api}/proxies/{proxy}", timeout=10)
        answer.raise_for_status()
        listen, upstream = answer.json()["listen"], answer.json()["upstream"]
        self.remove(proxy)
        self._call("POST", "/proxies", {"name": proxy, "listen": listen, "upstream": upstream})
        wait_for_port(int(listen.rsplit(":", 1)[1]), 10)

    def wan(self, proxy: str) -> None:
        """25 ms each way (a 50 ms round trip) and 100 Mbit/s each way."""
        for stream in ("upstream", "downstream"):
            self.toxic(proxy, "latency", stream, latency=WAN_LATENCY_MS)
            self.toxic(proxy, "bandwidth", stream, rate=WAN_RATE_KB)

    def remove(self, proxy: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}", None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> None:
        answer = self.http.request(method, self.api + path, json=body, timeout=10)
        if not answer.ok:
            raise RuntimeError(f"toxiproxy {method} {path}: HTTP {answer.status_code} {answer.text[:200]}")

    def stop(self) -> None:
        self.http.close()
        stop(self.process, 10)
        self.log.close()
