"""The whole job against the real AKTIN Broker and a real OpenSSH sshd."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.conftest import Setup
from tests.peers.broker import BrokerServer, zip_entries


def status_entries(xml: bytes) -> dict[int, dict[str, str]]:
    root = ET.fromstring(xml)
    return {
        int(e.findtext("id", "")): {child.tag: child.text or "" for child in e}
        for e in root.findall("request-status")
    }


def assert_matches_broker(setup: Setup, broker: BrokerServer, request_id: int) -> None:
    delivered = zip_entries(setup.decrypt(f"export_{request_id}.zip"))
    assert delivered == broker.export(request_id)


def test_seed_scenario(setup: Setup, broker_server: BrokerServer) -> None:
    first, second = broker_server.nodes["Schwarzwaldklinik"], broker_server.nodes["Sachsenklinik"]
    tagged = [broker_server.create_request([setup.tag, "other"]) for _ in range(3)]
    untagged = [broker_server.create_request(["other"]), broker_server.create_request([])]
    for request_id in tagged + untagged:
        first.submit(request_id, f"result of {request_id} from the first hospital".encode())

    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert sorted(local) == tagged
    assert {e["completion"] for e in local.values()} == {"1.0"}
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in tagged] + ["status.xml"])
    assert (setup.folder / "status.xml").read_bytes() == (setup.state_dir / "status.xml").read_bytes()
    for request_id in tagged:
        assert_matches_broker(setup, broker_server, request_id)

    newest = broker_server.create_request([setup.tag])
    second.submit(tagged[0], b"second hospital, first request")
    second.submit(tagged[1], b"second hospital, second request")
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"re-delivered request {tagged[0]}" in done.stderr
    assert f"re-delivered request {tagged[1]}" in done.stderr
    assert f"delivered request {newest} (new" in done.stderr
    assert f"re-delivered request {tagged[2]}" not in done.stderr
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert sorted(local) == sorted([*tagged, newest])
    assert "last-update" in local[tagged[0]] and "last-update" in local[tagged[1]]
    assert "last-update" not in local[tagged[2]]
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in [*tagged, newest]] + ["status.xml"])
    for request_id in [*tagged, newest]:
        assert_matches_broker(setup, broker_server, request_id)
    assert b"second hospital, first request" in b"".join(
        zip_entries(setup.decrypt(f"export_{tagged[0]}.zip")).values()
    )

    broker_server.delete_request(tagged[0])
    broker_server.delete_request(newest)
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert sorted(i for i, e in local.items() if "deleted" in e) == sorted([tagged[0], newest])
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in tagged[1:]] + ["status.xml"])
    assert status_entries((setup.folder / "status.xml").read_bytes()) == local
