"""The listener (`watch`) against the broker's real admin websocket (or the double's, held to it)
and a real sshd: a result reaches the SFTP folder seconds after a hospital submitted it, without
the timer.

systemd's part (aktin-broker-sftp.path starting the service while the trigger file exists, the
service's start removing it) is played by `PathUnit`; the booted Debian tests run the real units.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Setup
from tests.peers import broker as broker_peer
from tests.peers.broker import NODE_KEYS, BrokerServer, zip_entries
from tests.peers.toxiproxy import Toxiproxy
from tests.peers.watcher import Listener, PathUnit

QUIET = 2.0
# Far beyond a burst's length on a loaded machine: a burst is cut short by its quiet end only.
LONGEST = 60.0


def watch_config(setup: Setup, timeout: float = 10, broker_url: str | None = None) -> Path:
    text = setup.config.read_text().replace("timeout = 60", f"timeout = {timeout:g}", 1)
    if broker_url is not None:
        text = re.sub(r'url = "[^"]*"', f'url = "{broker_url}"', text, count=1)
    path = setup.config.with_name("watch.toml")
    path.write_text(text + f"\n[watch]\nquiet_seconds = {QUIET:g}\nmax_delay_seconds = {LONGEST:g}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def listening(setup: Setup, tmp_path: Path) -> Iterator[tuple[Listener, PathUnit]]:
    """A listener and the path unit, after the run that catches up on connecting is over."""
    config = watch_config(setup)
    trigger = tmp_path / "run" / "trigger"
    trigger.parent.mkdir(mode=0o700)
    units = PathUnit(trigger, [*setup.command(config), "run"])
    listener = Listener(setup.command(config), trigger)
    try:
        listener.wait_for("listening to the broker's events at ws://", 60)
        units.wait_for_runs(1, QUIET + 60)
        yield listener, units
    finally:
        code = listener.stop()
        units.stop()
    assert code == 0, listener.text()
    assert "Traceback" not in listener.text()
    assert all(run.code == 0 for run in units.runs), [run.stderr for run in units.runs]


def delivered(setup: Setup, request_id: int) -> bool:
    return (setup.folder / f"export_{request_id}.zip").exists()


def submitted_and_delivered(broker: BrokerServer, setup: Setup, listener: Listener, result: bytes) -> None:
    """A new request of the test's tag gets a hospital's result; returns once its file is in the folder."""
    request_id = broker.create_request([setup.tag])
    broker.nodes["Sachsenklinik"].submit(request_id, result)
    deadline = time.monotonic() + QUIET + 60
    while not delivered(setup, request_id):
        assert time.monotonic() < deadline, listener.text()
        time.sleep(0.05)


def test_a_submitted_result_is_delivered_within_the_quiet_period_and_one_run(
    setup: Setup, broker_server: BrokerServer, listening: tuple[Listener, PathUnit]
) -> None:
    listener, units = listening
    request_id = broker_server.create_request([setup.tag])
    units.wait_for_runs(2, QUIET + 60)
    units.settle(QUIET + 1, 120)
    before = len(units.runs)
    # Delivered already, without results; the new version is renamed into place: a new inode.
    delivered_before = (setup.folder / f"export_{request_id}.zip").stat().st_ino
    submitted = time.monotonic()
    broker_server.nodes["Sachsenklinik"].submit(request_id, b"seconds, not an hour")
    while (setup.folder / f"export_{request_id}.zip").stat().st_ino == delivered_before:
        assert time.monotonic() - submitted < QUIET + 60, listener.text()
        time.sleep(0.05)
    latency = time.monotonic() - submitted
    units.wait_for_runs(before + 1, 60)
    run = units.runs[before]
    assert latency <= QUIET + 1.5 + (run.ended - run.began), "the quiet period, then one run"
    results = [n for n in zip_entries(setup.decrypt(f"export_{request_id}.zip")) if "_result" in n]
    assert len(results) == 1
    listener.wait_for("delivery run requested", 5, after=submitted)


def test_a_burst_of_fifty_results_leads_to_at_most_two_runs(
    setup: Setup, broker_server: BrokerServer, listening: tuple[Listener, PathUnit]
) -> None:
    _, units = listening
    requests = [broker_server.create_request([setup.tag]) for _ in range(25)]
    units.wait_for_runs(2, LONGEST + 120)
    units.settle(QUIET + 1, 120)
    before = len(units.runs)
    for request_id in requests:
        for name in ("Sachsenklinik", "Schwarzwaldklinik"):
            broker_server.nodes[name].submit(request_id, f"{name} {request_id}".encode())
    # A quiet period after the burst's last event: whatever it asks for is asked by now.
    time.sleep(QUIET + 1.5)
    units.settle(QUIET + 1, LONGEST + 180)
    assert 1 <= len(units.runs) - before <= 2
    for request_id in requests:
        results = [n for n in zip_entries(setup.decrypt(f"export_{request_id}.zip")) if "_result" in n]
        assert len(results) == 2, f"request {request_id}: {results}"


def test_a_broker_restart_is_survived_and_the_next_result_still_starts_a_run(
    setup: Setup, broker_server: BrokerServer, listening: tuple[Listener, PathUnit]
) -> None:
    listener, units = listening
    restarted = time.monotonic()
    broker_server.restart(down=2)
    listener.wait_for("broke off|closed its admin websocket", 60, after=restarted)
    again = listener.wait_for(r"listening to the broker's events at .* \(again, after", 90, after=restarted)
    units.wait_for_runs(2, again - restarted + QUIET + 60)
    request_id = broker_server.create_request([setup.tag])
    units.settle(QUIET + 1, 120)
    runs = len(units.runs)
    broker_server.nodes["Sachsenklinik"].submit(request_id, b"after the restart")
    units.wait_for_runs(runs + 1, QUIET + 60)
    results = [n for n in zip_entries(setup.decrypt(f"export_{request_id}.zip")) if "_result" in n]
    assert len(results) == 1
    assert len(re.findall("listening again as soon as the broker answers", listener.text())) == 1


def test_an_idle_close_by_the_broker_is_met_by_connecting_again(setup: Setup, tmp_path: Path) -> None:
    """A broker that closes silent sessions sooner than the listener pings: each close is a
    lost connection, the next one listens again, and results still start runs."""
    broker = broker_peer.start(tmp_path / "idle-broker", idle_timeout=3)
    trigger = tmp_path / "trigger"
    try:
        config = watch_config(setup, timeout=10, broker_url=broker.url)
        units = PathUnit(trigger, [*setup.command(config), "run"])
        listener = Listener(setup.command(config), trigger)
        try:
            opened = listener.wait_for("listening to the broker's events", 60)
            listener.wait_for("closed its admin websocket", 10, after=opened)
            again = listener.wait_for(r"listening to the broker's events at .* \(again, after", 10, after=opened)
            submitted_and_delivered(broker, setup, listener, b"between two idle closes")
        finally:
            code = listener.stop()
            units.stop()
    finally:
        broker.stop()
    assert code == 0 and again - opened < 8, listener.text()
    assert all(run.code == 0 for run in units.runs), [run.stderr for run in units.runs]


@pytest.mark.parametrize("key", ["wrong-key", NODE_KEYS["Sachsenklinik"]], ids=["unknown key", "node key"])
def test_a_key_the_broker_refuses_ends_the_listener_with_78(setup: Setup, tmp_path: Path, key: str) -> None:
    config = watch_config(setup)
    config.write_text(re.sub(r'api_key = "[^"]*"', f'api_key = "{key}"', config.read_text()))
    done = subprocess.run(
        [*setup.command(config), "watch", "--trigger", str(tmp_path / "trigger")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and "broker refused the API key (HTTP 401)" in done.stderr
    assert key not in done.stderr
    assert not (tmp_path / "trigger").exists()


def test_a_stalled_websocket_is_noticed_and_the_listener_connects_again(
    setup: Setup, broker_server: BrokerServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    timeout = 2.0
    name = f"watch-{setup.tag}"
    port = toxiproxy.proxy(name, broker_server.port)
    config = watch_config(setup, timeout=timeout, broker_url=f"http://127.0.0.1:{port}")
    trigger = tmp_path / "trigger"
    units = PathUnit(trigger, [*setup.command(), "run"])
    listener = Listener(setup.command(config), trigger)
    try:
        listener.wait_for("listening to the broker's events", 60)
        units.wait_for_runs(1, QUIET + 60)
        stalled = time.monotonic()
        toxiproxy.toxic(name, "timeout", "downstream", timeout=0)
        noticed = listener.wait_for("went quiet: no answer to a ping within", 3 * timeout + 5, after=stalled)
        assert noticed - stalled <= 1.5 * timeout + 1.5, "half a timeout to the ping, one for its answer"
        time.sleep(2 * timeout)
        healed = time.monotonic()
        toxiproxy.heal(name)
        again = listener.wait_for(r"listening to the broker's events at .* \(again, after", 30, after=healed)
        units.wait_for_runs(2, again - healed + QUIET + 60)
        submitted_and_delivered(broker_server, setup, listener, b"after the stall")
    finally:
        code = listener.stop()
        units.stop()
        toxiproxy.remove(name)
    assert code == 0, listener.text()
    assert listener.text().count("went quiet") == 1, "one line for the outage, not one per attempt"
