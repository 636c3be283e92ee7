"""The network fault matrix: Toxiproxy in front of sshd or the broker breaks the connection in one
way at one step of a run. Every cell checks what an operator relies on: the exit code, an end
within three times the timeout involved, no partial file under a final name, nobody else's file
touched, the lock released, and a next run that ends where an uninterrupted one would have.

Cells left out, and why:
- a refused connection after the login or the broker's first call: the connection exists already;
- a trickle or a cut during a rename or a removal: one small packet each way, which a trickle or
  a cut hits as it hits any other wait; the stall cell stands for them;
- a slow close anywhere but at the login, the broker listing and the download: it acts only when
  a connection ends, which is the same whichever step came before; those cells stand for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp.sftp import PARTIAL
from tests.conftest import Setup
from tests.integration.test_delivery import assert_matches_broker, status_entries
from tests.integration.test_faults import one_error_line
from tests.peers.broker import BrokerServer, RealBroker
from tests.peers.faults import BrokerProxy, Rule
from tests.peers.pause import Paused
from tests.peers.sshd import UID, SshServer
from tests.peers.toxiproxy import Toxiproxy

pytestmark = pytest.mark.heavy

# [sftp] timeout in every cell, and [broker] timeout where the double answers. The real broker
# builds a bundle before its answer begins, about 1.3 s for the 12 MiB ones here: with it, the
# broker's timeout is REAL_BROKER_TIMEOUT, and the faults on its side scale with it.
TIMEOUT = 1.0
REAL_BROKER_TIMEOUT = 3.0
BIG = 12 << 20
THEIRS = {"notes.txt": b"the recipient's own notes", "export_999999999.zip": b"the recipient's own file of that name"}

Fault = Callable[[Toxiproxy, str], None]


def both(kind: str, **attributes: int) -> Fault:
    def apply(toxiproxy: Toxiproxy, proxy: str) -> None:
        for stream in ("upstream", "downstream"):
            toxiproxy.toxic(proxy, kind, stream, **attributes)

    return apply


def answers(kind: str, **attributes: int) -> Fault:
    def apply(toxiproxy: Toxiproxy, proxy: str) -> None:
        toxiproxy.toxic(proxy, kind, "downstream", **attributes)

    return apply


def faults(timeout: float) -> dict[str, Fault]:
    """The faults, for a peer whose timeout is `timeout`."""
    return {
        "refused": lambda toxiproxy, proxy: toxiproxy.enable(proxy, False),
        # Nothing gets through either way while the connection stays open.
        "stall": both("timeout", timeout=0),
        "reset": both("reset_peer", timeout=0),
        "cut": both("limit_data", bytes=200),
        "slow-close": both("slow_close", delay=int(3000 * timeout)),
        "latency": both("latency", latency=int(2500 * timeout)),
        # A byte every 0.2 s: every single read is answered in time, the answer never is.
        "trickle": answers("slicer", average_size=1, size_variation=0, delay=200_000),
    }


def timeout_of(side: str, broker_server: BrokerServer) -> float:
    return REAL_BROKER_TIMEOUT if side == "broker" and isinstance(broker_server, RealBroker) else TIMEOUT


def bound(timeout: float) -> float:
    """Three times the timeout, and the start and end of a Python process."""
    return 3 * timeout + 1.5


@dataclass(frozen=True)
class Cell:
    side: str
    phase: str
    fault: str
    code: int

    @property
    def id(self) -> str:
        return f"{self.side}-{self.phase}-{self.fault}"


# Where a run is held to break the connection; None: broken before the run starts.
STEPS = {
    ("sftp", "login"): None,
    ("sftp", "listing"): "sftp:listing",
    ("sftp", "upload"): "upload:export",
    ("sftp", "rename"): "rename:export",
    ("sftp", "status.xml"): "upload:status.xml",
    ("sftp", "remove"): "sftp:remove",
    ("broker", "listing"): None,
    ("broker", "status"): "broker:status",
    ("broker", "export"): "broker:export",
    ("broker", "download"): "download",
}


def cells() -> list[Cell]:
    table = {
        ("sftp", "login"): {"refused": 69, "stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69, "slow-close": 0},
        ("sftp", "listing"): {"stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69},
        ("sftp", "upload"): {"stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69},
        ("sftp", "rename"): {"stall": 69, "reset": 69, "latency": 69},
        ("sftp", "status.xml"): {"stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69},
        ("sftp", "remove"): {"stall": 69, "reset": 69, "latency": 69},
        ("broker", "listing"): {
            "refused": 69, "stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69, "slow-close": 0,
        },
        ("broker", "status"): {"stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69},
        ("broker", "export"): {"stall": 69, "reset": 69, "cut": 69, "latency": 69, "trickle": 69},
        # A download cut short leaves that request to the next run; the fault stays, so the next
        # call to the broker fails the run.
        ("broker", "download"): {"stall": 69, "reset": 69, "cut": 69, "trickle": 69, "slow-close": 0},
    }
    return [Cell(side, phase, fault, code) for (side, phase), faults in table.items() for fault, code in faults.items()]


def comparable_state(xml: bytes) -> dict[int, tuple[str, str, bool]]:
    return {i: (e["completion"], e["fingerprint"], bool(e.get("deleted"))) for i, e in status_entries(xml).items()}


def assert_whole(setup: Setup) -> None:
    """Whatever is under a final name of ours is complete: every token opens, status.xml parses."""
    for path in setup.folder.iterdir():
        if path.name.startswith("export_") and path.name not in THEIRS:
            assert Fernet(setup.key).decrypt(path.read_bytes())[:2] == b"PK", path.name
        elif path.name == "status.xml":
            ET.fromstring(path.read_bytes())


def through_proxy(
    side: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy
) -> tuple[str, Path]:
    """A proxy in front of the `side` server, and a config that reaches it through it."""
    name = f"{side}-{setup.tag}"[:60]
    port = toxiproxy.proxy(name, ssh_server.port if side == "sftp" else broker_server.port)
    return name, reaching(side, port, setup, broker_server, ssh_server)


def reaching(side: str, port: int, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer) -> Path:
    """The test's config with each side's timeout, reaching the `side` server at `port`."""
    faulty = setup.config.with_name("faulty.toml")
    broker = timeout_of("broker", broker_server)
    faulty.write_text(setup.config.read_text().replace("timeout = 60", f"timeout = {broker:g}").replace(
        "[sftp]\n", f"[sftp]\ntimeout = {TIMEOUT:g}\n"))
    faulty.chmod(0o600)
    if side == "sftp":
        ssh_server.via_proxy(faulty, port)
    else:
        faulty.write_text(faulty.read_text().replace(broker_server.url, f"http://127.0.0.1:{port}"))
    return faulty


def broken_at(
    step: str | None, fault: str, command: list[str], config: Path, setup: Setup, toxiproxy: Toxiproxy, proxy: str,
    tmp_path: Path, idle: float = 0.0, threads: int = 1, late: bool = False, timeout: float = TIMEOUT,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`command` run with `fault` (for a peer of `timeout`) in `proxy` from `step` on (None: from before its start) once
    `threads` of it wait there, let go `idle` seconds later (`late`: let go first, broken then);
    what it ended with, and how long it took from there. The proxy is healed afterwards."""
    try:
        if step is None:
            faults(timeout)[fault](toxiproxy, proxy)
            started = time.monotonic()
            ended = setup.run(*command, config=config)
        else:
            held = Paused([*setup.command(config), *command], step, tmp_path)
            held.wait_for(threads)
            if late:
                started = held.release()
                faults(timeout)[fault](toxiproxy, proxy)
            else:
                faults(timeout)[fault](toxiproxy, proxy)
                time.sleep(idle)
                started = held.release()
            ended = held.finish()
        return ended, time.monotonic() - started
    finally:
        toxiproxy.heal(proxy)


@pytest.mark.parametrize("cell", cells(), ids=lambda cell: cell.id)
def test_a_network_fault_at_any_step_ends_in_time_and_loses_nothing(
    cell: Cell, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    hospital = broker_server.nodes["Bergklinik"]
    big = cell.phase in ("upload", "download")
    ids = [broker_server.create_request([setup.tag]) for _ in range(3 if cell.phase == "upload" else 1)]
    for request_id in ids:
        hospital.submit(request_id, os.urandom(BIG) if big else b"a result", "application/octet-stream")
    gone = broker_server.create_request([setup.tag])
    for theirs, content in THEIRS.items():
        (setup.folder / theirs).write_bytes(content)
        os.chown(setup.folder / theirs, UID, UID)
    setup.state_dir.mkdir()
    (setup.state_dir / "operator.txt").write_text("mine")
    name, faulty = through_proxy(cell.side, setup, broker_server, ssh_server, toxiproxy)
    # The destination is host, port and folder: the runs before and after go through the proxy too.
    if cell.phase == "remove":
        assert setup.run("run", config=faulty).returncode == 0
        broker_server.delete_request(gone)
    else:
        ids.append(gone)
    # Upload: every request's upload under way before the connection breaks (with the real
    # broker, one: its exports come one after another, 1.3 s each, while an upload held at its
    # checkpoint is cut after [sftp] timeout). Download: Toxiproxy changes a connection only
    # between two of its writes, and it cannot write to a reader that is held, so the download
    # goes on first, then breaks.
    timeout = timeout_of(cell.side, broker_server)
    uploads = 1 if isinstance(broker_server, RealBroker) else len(ids) - 1
    failed, took = broken_at(
        STEPS[(cell.side, cell.phase)], cell.fault, ["run"], faulty, setup, toxiproxy, name, tmp_path,
        threads=uploads if cell.phase == "upload" else 1, late=cell.phase == "download", timeout=timeout,
    )

    assert failed.returncode == cell.code, failed.stderr
    assert took < bound(timeout), f"took {took:.1f} s: {failed.stderr}"
    if cell.code:
        error = one_error_line(failed.stderr)
        if cell.fault in ("stall", "latency", "trickle"):
            assert f"[{cell.side}] timeout" in error, error
        if cell.fault == "refused":
            assert "unreachable" in error, error
    assert_whole(setup)
    for theirs, content in THEIRS.items():
        assert (setup.folder / theirs).read_bytes() == content
    assert (setup.state_dir / "operator.txt").read_text() == "mine"

    again = setup.run("run", config=faulty)
    toxiproxy.remove(name)
    assert again.returncode == 0, again.stderr
    assert setup.remote_files() == sorted([*THEIRS, *(f"export_{i}.zip" for i in ids), "status.xml"])
    for request_id in ids:
        assert_matches_broker(setup, broker_server, request_id)
    state = comparable_state((setup.state_dir / "status.xml").read_bytes())
    assert sorted(state) == sorted({*ids, gone})
    assert state.get(gone, ("", "", False))[2] == (cell.phase == "remove")
    assert comparable_state((setup.folder / "status.xml").read_bytes()) == state
    assert sorted(p.name for p in setup.state_dir.iterdir()) == [
        "last-run.json", "lock", "operator.txt", "status.xml", "status.xml.prev",
    ]


# The commands an operator runs by hand, each held where it waits on the peer (None: the peer
# stalls before the command starts).
BY_HAND = [
    (["check"], "broker", None),
    (["check"], "sftp", "sftp:listing"),
    (["verify"], "sftp", "sftp:listing"),
    (["verify", "--deep"], "sftp", "sftp:download"),
    (["redeliver", "--now"], "sftp", "upload:export"),
    (["redeliver", "--now"], "broker", "broker:export"),
]


@pytest.mark.parametrize(("command", "side", "step"), BY_HAND, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
@pytest.mark.parametrize("fault", ["stall", "trickle"])
def test_a_command_run_by_hand_ends_in_time_when_a_peer_stops_answering(
    command: list[str], side: str, step: str | None, fault: str,
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy, tmp_path: Path,
) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(256 << 10), "application/octet-stream")
    name, faulty = through_proxy(side, setup, broker_server, ssh_server, toxiproxy)
    assert setup.run("run", config=faulty).returncode == 0
    delivered = (setup.folder / f"export_{request_id}.zip").read_bytes()
    state = (setup.state_dir / "status.xml").read_bytes()
    if command[0] == "redeliver":
        command = [*command, str(request_id)]
    timeout = timeout_of(side, broker_server)
    failed, took = broken_at(step, fault, command, faulty, setup, toxiproxy, name, tmp_path, timeout=timeout)
    assert failed.returncode == 69, failed.stderr
    assert took < bound(timeout), f"took {took:.1f} s: {failed.stderr}"
    assert f"[{side}] timeout" in one_error_line(failed.stderr)
    assert (setup.folder / f"export_{request_id}.zip").read_bytes() == delivered
    # An upload cut short leaves only its temporary name, which the next run removes.
    assert [n for n in setup.remote_files() if not PARTIAL.fullmatch(n)] == [f"export_{request_id}.zip", "status.xml"]
    # No work file left (verify --deep downloads into the state directory).
    assert {p.name for p in setup.state_dir.iterdir()} - {"status.xml.prev"} == {"last-run.json", "lock", "status.xml"}
    if command[0] == "redeliver":
        # Queued, not yet delivered: the next run, not held by any lock, delivers it again.
        again = setup.run("run", config=faulty)
        assert again.returncode == 0, again.stderr
        redelivered = setup.folder.joinpath(f"export_{request_id}.zip").read_bytes()
        # A new token (Fernet's IV is random) of a new export of the same result.
        assert redelivered != delivered
        assert_matches_broker(setup, broker_server, request_id)
        assert setup.remote_files() == [f"export_{request_id}.zip", "status.xml"]
    else:
        assert (setup.state_dir / "status.xml").read_bytes() == state
        again = setup.run(*command, config=faulty)
        assert again.returncode == 0, again.stderr
    toxiproxy.remove(name)


def test_after_the_sftp_server_stalls_no_export_starts_that_could_not_be_uploaded(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    """Deliveries waiting for their turn at the broker when the upload of another stalls do not
    export, download and encrypt bundles that can no longer be uploaded."""
    ids = [broker_server.create_request([setup.tag]) for _ in range(8)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, b"a result")
    broker = BrokerProxy(broker_server.port)
    try:
        # Each export takes its time on the broker, so most are still waiting when the stall hits.
        broker.rules.append(Rule("POST", r"/broker/export/", delay=0.4))
        name, faulty = through_proxy("sftp", setup, broker_server, ssh_server, toxiproxy)
        faulty.write_text(faulty.read_text().replace(broker_server.url, broker.url).replace(
            "[sftp]\n", "[sftp]\nparallel = 8\n"))
        failed, took = broken_at("upload:export", "stall", ["run"], faulty, setup, toxiproxy, name, tmp_path)
        assert failed.returncode == 69, failed.stderr
        assert "[sftp] timeout" in one_error_line(failed.stderr)
        exports = [seen for seen in broker.seen if seen.startswith("POST /broker/export/")]
        # The one held at its upload and those exported while its upload stalled (about one
        # timeout: three or four), none after; without the bound, all eight.
        assert len(exports) <= 6, (exports, failed.stderr)
        assert took < bound(TIMEOUT), f"took {took:.1f} s: {failed.stderr}"
        again = setup.run("run", config=faulty)
        assert again.returncode == 0, again.stderr
        assert setup.remote_files() == sorted([*(f"export_{i}.zip" for i in ids), "status.xml"])
    finally:
        broker.stop()
    toxiproxy.remove(name)


@pytest.mark.parametrize("side", ["broker", "sftp"])
def test_a_connect_nobody_answers_ends_in_time(
    side: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer
) -> None:
    """A listener whose queue is full drops every further SYN, as a firewall that drops does:
    each connect waits its whole timeout, so none is tried again."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            config = reaching(side, port, setup, broker_server, ssh_server)
            started = time.monotonic()
            failed = setup.run("run", config=config)
            took = time.monotonic() - started
    assert failed.returncode == 69, failed.stderr
    assert took < bound(timeout_of(side, broker_server)), f"took {took:.1f} s: {failed.stderr}"
    assert f"[{side}] timeout" in one_error_line(failed.stderr)


def test_an_sftp_server_gone_quiet_while_the_run_waits_on_the_broker_is_noticed_by_a_keepalive(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, b"a result")
    name, faulty = through_proxy("sftp", setup, broker_server, ssh_server, toxiproxy)
    # Logged in and listed, the SFTP connection idles while the export is held.
    failed, took = broken_at("broker:export", "stall", ["run"], faulty, setup, toxiproxy, name, tmp_path, idle=3 * TIMEOUT)
    assert failed.returncode == 69, failed.stderr
    assert "did not answer a keepalive" in one_error_line(failed.stderr)
    assert took < bound(TIMEOUT), f"took {took:.1f} s: {failed.stderr}"
    again = setup.run("run", config=faulty)
    toxiproxy.remove(name)
    assert again.returncode == 0, again.stderr
    assert setup.remote_files() == [f"export_{request_id}.zip", "status.xml"]
