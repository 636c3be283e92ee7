"""The listener's pure decisions: when a run is due after a burst of events, which messages are
about requests, and where the admin websocket is."""

from __future__ import annotations

import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp.broker_events import websocket_url
from aktin_sftp.watch import Pending, is_request_event
from tests.peers.http_server import LocalHttpServer


def test_no_event_no_run() -> None:
    pending = Pending(quiet=20, longest=120)
    assert pending.due_at() is None and pending.take(10**6) == 0


def test_one_event_is_due_after_the_quiet_period() -> None:
    pending = Pending(quiet=20, longest=120)
    pending.note(100)
    assert pending.take(119.9) == 0
    assert pending.take(120) == 1
    assert pending.take(10**6) == 0, "taken once"


def simulate(gap: float, events: int, quiet: float = 20, longest: float = 120) -> list[tuple[float, int]]:
    """The runs (moment, events it stands for) when `events` come `gap` seconds apart, the
    clock looked at every 0.1 s as the listener does."""
    pending = Pending(quiet, longest)
    arrivals = [round(i * gap, 1) for i in range(events)]
    runs = []
    for tenth in range(int((arrivals[-1] + quiet + 1) * 10)):
        now = tenth / 10
        for _ in range(arrivals.count(now)):
            pending.note(now)
        count = pending.take(now)
        if count:
            runs.append((now, count))
    return runs


def test_a_burst_of_a_hundred_results_is_one_run_after_the_quiet_period() -> None:
    assert simulate(gap=0.1, events=100) == [(29.9, 100)]


def test_events_that_never_pause_still_get_a_run_every_longest_seconds() -> None:
    runs = simulate(gap=10, events=100)
    assert [moment for moment, _ in runs][:3] == [120, 250, 380]
    assert sum(count for _, count in runs) == 100


def test_events_after_a_run_start_a_new_period() -> None:
    pending = Pending(quiet=2, longest=5)
    pending.note(0)
    assert pending.take(2) == 1
    pending.note(3)
    assert pending.due_at() == 5
    pending.note(4)
    assert (pending.due_at(), pending.take(6)) == (6, 2)


@pytest.mark.parametrize(
    "message, about_a_request",
    [
        ("created 3", True), ("published 3", True), ("closed 3", True), ("status 3 1 completed", True),
        ("result 3 1 application/zip", True), ("resource 1 site.properties", False), ("welcome Admin", False),
        ("pong 0", False), ("", False), ("results 3", False),
    ],
)
def test_which_messages_are_about_requests(message: str, about_a_request: bool) -> None:
    assert is_request_event(message) is about_a_request


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://localhost:8080", "ws://localhost:8080/broker/websocket"),
        ("https://broker.example.org", "wss://broker.example.org/broker/websocket"),
        ("https://example.org/aktin/", "wss://example.org/aktin/broker/websocket"),
    ],
)
def test_the_websocket_is_beside_the_rest_api(url: str, expected: str) -> None:
    assert websocket_url(url) == expected


class OldBroker(BaseHTTPRequestHandler):
    """A broker whose REST API answers but that has no admin websocket (404 there)."""

    def do_GET(self) -> None:
        if self.path.startswith("/broker/request/filtered"):
            body = b'<request-list xmlns="http://aktin.org/ns/exchange"/>'
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_broker_without_the_websocket_is_said_once_and_the_listener_waits(tmp_path: Path) -> None:
    server = LocalHttpServer(OldBroker)
    (tmp_path / "fernet.key").write_bytes(Fernet.generate_key())
    (tmp_path / "known_hosts").write_text("[127.0.0.1]:1 ssh-ed25519 AAAA\n")
    config = tmp_path / "sftp.toml"
    config.write_text(
        f'[broker]\nurl = "{server.url}"\napi_key = "k"\ntag = "t"\ntimeout = 2\n'
        '[sftp]\nhost = "127.0.0.1"\nport = 1\nusername = "u"\npassword = "p"\nknown_hosts = "known_hosts"\nfolder = "f"\n'
        '[encryption]\nkey_file = "fernet.key"\n'
    )
    for path in tmp_path.iterdir():
        path.chmod(0o600)
    trigger = tmp_path / "trigger"
    listener = subprocess.Popen(
        [sys.executable, "-m", "aktin_sftp", "--config", str(config), "watch", "--trigger", str(trigger)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(4)
        assert listener.poll() is None, "it waits, asking again later"
    finally:
        listener.terminate()
        _, errors = listener.communicate(timeout=10)
        server.stop()
    assert listener.returncode == 0
    lines = errors.splitlines()
    assert lines[0].startswith("WARNING: the admin websocket of the broker at http://127.0.0.1:")
    assert "does not exist (HTTP 404 at /broker/websocket): deliveries start by the timer only" in lines[0]
    assert lines[1:] == ["INFO: listener stopped"]
    assert not trigger.exists()
