"""Deliveries across an emulated WAN (Toxiproxy in front of sshd: 25 ms each way, 100 Mbit/s),
as to a recipient such as the RKI: everything arrives whole, at once over several channels."""

from __future__ import annotations

import os

from tests.conftest import Setup
from tests.integration.test_faults import expected_files, through
from tests.peers.broker import BrokerServer
from tests.peers.sshd import SshServer
from tests.peers.toxiproxy import Toxiproxy


def test_a_bulk_delivery_over_the_wan_arrives_whole_and_verifies(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(16)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(64 << 10), "application/octet-stream")
    port = toxiproxy.proxy(setup.tag, ssh_server.port)
    toxiproxy.wan(setup.tag)
    try:
        config = through(setup, ssh_server, port)
        done = setup.run("run", config=config)
        assert done.returncode == 0, done.stderr
        assert setup.remote_files() == expected_files(ids)
        checked = setup.run("verify", "--deep", config=config)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        toxiproxy.remove(setup.tag)
    for request_id in ids:
        assert setup.decrypt(f"export_{request_id}.zip")[:2] == b"PK"
