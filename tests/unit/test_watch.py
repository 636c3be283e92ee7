"""The listener's pure decisions: when a run is due after a burst of events, which messages are
about requests, and where the admin websocket is."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import config, watch
from aktin_sftp.broker import KeyRefused
from aktin_sftp.broker_events import Lost, websocket_url
from aktin_sftp.errors import ConfigError
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

    handshakes = 0

    def do_GET(self) -> None:
        if self.path == "/broker/websocket":
            OldBroker.handshakes += 1
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


def write_config(directory: Path, url: str) -> Path:
    (directory / "fernet.key").write_bytes(Fernet.generate_key())
    (directory / "known_hosts").write_text("[127.0.0.1]:1 ssh-ed25519 AAAA\n")
    path = directory / "sftp.toml"
    path.write_text(
        f'[broker]\nurl = "{url}"\napi_key = "k"\ntag = "t"\ntimeout = 2\n'
        '[sftp]\nhost = "127.0.0.1"\nport = 1\nusername = "u"\npassword = "p"\nknown_hosts = "known_hosts"\nfolder = "f"\n'
        '[encryption]\nkey_file = "fernet.key"\n'
    )
    for name in ("fernet.key", "known_hosts", "sftp.toml"):
        (directory / name).chmod(0o600)
    return path


def interrupted_after(waits: int, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Has the listener's pauses between connections recorded, and interrupted at the
    `waits`-th, as SIGTERM would."""
    pauses: list[float] = []

    def pause(seconds: float, *_: object) -> None:
        pauses.append(seconds)
        if len(pauses) == waits:
            raise KeyboardInterrupt

    monkeypatch.setattr(watch, "_wait", pause)
    return pauses


def test_a_broker_without_the_websocket_is_said_once_and_asked_again_every_ten_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = LocalHttpServer(OldBroker)
    OldBroker.handshakes = 0
    try:
        settings = config.load(write_config(tmp_path, server.url))
        pauses = interrupted_after(3, monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            watch.watch(settings, tmp_path / "trigger")
    finally:
        server.stop()
    assert pauses == [watch.NO_WEBSOCKET_RETRY] * 3 and OldBroker.handshakes == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "does not exist (HTTP 404 at /broker/websocket): deliveries start by the timer only" in warnings[0]
    assert not (tmp_path / "trigger").exists()


def test_reconnects_back_off_and_an_outage_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = watch._Outage()
    brief = [outage.lost(Lost("broker gone"), lasted=1) for _ in range(8)]
    assert brief == [1, 2, 4, 8, 16, 32, 60, 60]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    outage.over("ws://broker/broker/websocket")
    assert outage.lost(Lost("broker gone"), lasted=600) == watch.RETRY_FIRST, "a connection that lasted: at once"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


@pytest.mark.parametrize("listened", [False, True])
def test_a_config_error_ends_the_listener_only_before_it_ever_listened_a_refused_key_always(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listened: bool
) -> None:
    """After a broker restart, a proxy in front of it may answer 404 for a while."""
    settings = config.load(write_config(tmp_path, "http://127.0.0.1:1"))
    calls: list[str] = []

    def listen(_: object, __: object, ___: object, outage: watch._Outage) -> None:
        calls.append("listen")
        if listened and len(calls) == 1:
            outage.over("ws://broker/broker/websocket")
        if len(calls) == 1:
            raise ConfigError("broker answered the listing with HTTP 404")
        raise KeyRefused("broker refused the API key (HTTP 401)")

    monkeypatch.setattr(watch, "_listen", listen)
    interrupted_after(5, monkeypatch)
    with pytest.raises(KeyRefused if listened else ConfigError) as raised:
        watch.watch(settings, tmp_path / "trigger")
    assert isinstance(raised.value, KeyRefused) is listened
    assert len(calls) == (2 if listened else 1)


def test_a_trigger_folder_that_is_not_there_is_a_config_error_at_once(tmp_path: Path) -> None:
    settings = config.load(write_config(tmp_path, "http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="its folder does not exist"):
        watch.watch(settings, tmp_path / "missing" / "trigger")


def test_sigterm_ends_the_listener_at_once_even_in_the_middle_of_a_connect(tmp_path: Path) -> None:
    """A broker that accepts the connection and never answers: the REST check alone could
    wait two timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        command = [sys.executable, "-m", "aktin_sftp", "--config", str(write_config(tmp_path, url)), "watch",
                   "--trigger", str(tmp_path / "trigger")]
        listener = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        # Once it connects, it is past its start (and its signal handler) and waits on the broker.
        silent.settimeout(60)
        waiting, _ = silent.accept()
        time.sleep(0.5)
        stopped = time.monotonic()
        listener.terminate()
        _, errors = listener.communicate(timeout=10)
        waiting.close()
    assert time.monotonic() - stopped < 1.5
    assert listener.returncode == 0, errors
    assert errors.splitlines() == ["INFO: listener stopped"]
