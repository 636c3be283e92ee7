"""Several deliveries at a time (`[sftp] parallel`), against the broker and a real sshd: they
overlap, each is recorded exactly once, and channels beyond the server's session limit come
from a second login. The crash and fault suites run with the default of 8 as well."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.integration.test_faults import expected_files, through
from tests.peers.broker import BrokerServer
from tests.peers.faults import BrokerProxy, Rule
from tests.peers.sshd import SshServer
from tests.peers.toxiproxy import Toxiproxy


@pytest.fixture
def proxy(broker_server: BrokerServer) -> Iterator[BrokerProxy]:
    server = BrokerProxy(broker_server.port)
    yield server
    server.stop()


def with_parallel(setup: Setup, parallel: int) -> Path:
    return setup.variant("[sftp]\n", f"[sftp]\nparallel = {parallel}\n")


def logins(ssh_server: SshServer) -> int:
    return (ssh_server.directory / "sshd.log").read_text().count("Accepted password for")


def test_exports_go_on_while_uploads_wait_and_never_two_at_once(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, proxy: BrokerProxy, toxiproxy: Toxiproxy
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(4)]
    port = toxiproxy.proxy(setup.tag, ssh_server.port)
    # Round trips of 600 ms: an upload (three of them) takes far longer than an export.
    for stream in ("upstream", "downstream"):
        toxiproxy.toxic(setup.tag, "latency", stream, latency=300)
    config = through(setup, ssh_server, port)
    config.write_text(config.read_text().replace(broker_server.url, proxy.url).replace("[sftp]\n", "[sftp]\nparallel = 4\n"))
    appeared: dict[int, float] = {}
    try:
        running = subprocess.Popen([*setup.command(config), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while running.poll() is None:
            for name in setup.remote_files():
                if name.startswith("export_"):
                    appeared.setdefault(int(name[len("export_"):-len(".zip")]), time.monotonic())
            time.sleep(0.02)
        _, stderr = running.communicate(timeout=120)
    finally:
        toxiproxy.remove(setup.tag)
    assert running.returncode == 0, stderr
    exported = {
        int(call.rsplit("/", 1)[1]): when
        for call, when in zip(proxy.seen, proxy.arrived, strict=True) if call.startswith("POST /broker/export/")
    }
    # Delivered one after another, no export would fall between another request's export and
    # the moment its file is in place (checked: with parallel = 1 this fails).
    overlapping = [
        (i, j) for i in exported for j in exported if i != j and exported[i] < exported[j] < appeared.get(i, 0)
    ]
    assert overlapping, (exported, appeared)
    # Broker 1.5.1 fails a download that meets an export (a Hashtable walked while it grows).
    calls = [call.split()[0] for call in proxy.seen if "/export/" in call or "/download/" in call]
    assert calls == ["POST", "GET"] * 4, proxy.seen
    assert setup.remote_files() == expected_files(ids)


def test_many_at_once_are_each_recorded_once_and_a_second_login_serves_beyond_max_sessions(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(30)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, f"result {request_id}".encode())
    before = logins(ssh_server)
    # OpenSSH allows 10 sessions per connection: 14 channels need a second login (the default
    # of 16 would too; 14 shows that the count, not the default, decides).
    done = setup.run("run", config=with_parallel(setup, 14))
    assert done.returncode == 0, done.stderr
    assert logins(ssh_server) - before == 2
    assert setup.remote_files() == expected_files(ids)
    for request_id in ids:
        assert len(re.findall(rf"delivered request {request_id} \(new", done.stderr)) == 1
        assert setup.decrypt(f"export_{request_id}.zip")[:2] == b"PK"
    status = (setup.state_dir / "status.xml").read_text()
    assert sorted(int(i) for i in re.findall(r"<id>(\d+)</id>", status)) == ids
    assert (setup.folder / "status.xml").read_text() == status
    again = setup.run("run", config=with_parallel(setup, 14))
    assert "run finished: 0 delivered, 0 removed, 30 unchanged" in again.stderr


def test_one_failing_export_among_concurrent_ones_fails_only_itself(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(8)]
    config = with_parallel(setup, 4)
    config.write_text(config.read_text().replace(broker_server.url, proxy.url))
    proxy.rules.append(Rule("POST", rf"/broker/export/request-bundle/{ids[3]}$", status=500))
    done = setup.run("run", config=config)
    assert done.returncode == 1
    assert setup.remote_files() == expected_files([i for i in ids if i != ids[3]])
    status = (setup.state_dir / "status.xml").read_text()
    assert f"<id>{ids[3]}</id>" not in status and status.count("<id>") == 7
