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
    assert f"export_{newest}.zip (deleted on the broker)" in done.stderr
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert sorted(i for i, e in local.items() if "deleted" in e) == sorted([tagged[0], newest])
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in tagged[1:]] + ["status.xml"])
    assert status_entries((setup.folder / "status.xml").read_bytes()) == local


def test_untagged_then_retagged_request_is_removed_then_delivered_again(setup: Setup, broker_server: BrokerServer) -> None:
    hospital = broker_server.nodes["Bergklinik"]
    request_id = broker_server.create_request([f" {setup.tag} "], prefix="ns")
    hospital.submit(request_id, b"first answer")
    assert setup.run("run").returncode == 0
    assert f"export_{request_id}.zip" in setup.remote_files()

    broker_server.set_tags(request_id, ["something-else"])
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"export_{request_id}.zip" not in setup.remote_files()
    assert f"export_{request_id}.zip (no longer tagged '{setup.tag}' on the broker)" in done.stderr

    broker_server.set_tags(request_id, [setup.tag])
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"delivered request {request_id} (reappeared" in done.stderr
    assert_matches_broker(setup, broker_server, request_id)
    entry = status_entries((setup.state_dir / "status.xml").read_bytes())[request_id]
    assert "deleted" not in entry and "last-update" in entry


def test_nothing_changed_means_nothing_uploaded_but_status(setup: Setup, broker_server: BrokerServer) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Schwarzwaldklinik"].submit(request_id, b"stable")
    assert setup.run("run").returncode == 0
    before = (setup.folder / f"export_{request_id}.zip").stat().st_mtime_ns
    # Progress states of another hospital do not change what the bundle holds.
    broker_server.nodes["Sachsenklinik"].session.post(f"{broker_server.url}/broker/my/request/{request_id}/status/retrieved")
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert "0 to deliver, 0 to remove, 1 unchanged" in done.stderr
    assert (setup.folder / f"export_{request_id}.zip").stat().st_mtime_ns == before


def test_a_failing_hospital_counts_as_a_change(setup: Setup, broker_server: BrokerServer) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Schwarzwaldklinik"].submit(request_id, b"ok")
    assert setup.run("run").returncode == 0
    broker_server.nodes["Bergklinik"].fail(request_id, "database offline")
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"re-delivered request {request_id} (changed, completion 0.5)" in done.stderr
    assert_matches_broker(setup, broker_server, request_id)


def test_max_delete_keeps_files_when_too_many_requests_vanish(setup: Setup, broker_server: BrokerServer) -> None:
    setup.config.write_text(setup.config.read_text().replace("max_delete = 5", "max_delete = 1"))
    ids = [broker_server.create_request([setup.tag]) for _ in range(3)]
    assert setup.run("run").returncode == 0
    for request_id in ids[:2]:
        broker_server.delete_request(request_id)
    done = setup.run("run")
    assert done.returncode == 1
    assert f"2 requests are gone from the broker listing (ids {ids[0]}, {ids[1]})" in done.stderr
    assert "max_delete = 1; nothing was removed" in done.stderr
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in ids] + ["status.xml"])

    setup.config.write_text(setup.config.read_text().replace("max_delete = 1", "max_delete = 2"))
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == [f"export_{ids[2]}.zip", "status.xml"]


def test_dry_run_changes_nothing_anywhere(setup: Setup, broker_server: BrokerServer) -> None:
    request_id = broker_server.create_request([setup.tag])
    done = setup.run("run", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would deliver request {request_id} (new) as export_{request_id}.zip" in done.stdout
    assert setup.remote_files() == []
    assert not setup.state_dir.exists()


def test_an_upstream_status_file_is_taken_over(setup: Setup, broker_server: BrokerServer) -> None:
    request_id = broker_server.create_request([setup.tag])
    gone = request_id + 100_000
    setup.state_dir.mkdir()
    (setup.state_dir / "status.xml").write_text(
        f"<status><request-status><id>{request_id}</id><completion>0.0</completion>"
        "<uploaded>2024-05-02 10:00:00</uploaded></request-status>"
        f"<request-status><id>{gone}</id><completion>1.0</completion><uploaded>2024-05-02 10:00:00</uploaded>"
        "<deleted>2024-05-04 10:00:00</deleted></request-status></status>"
    )
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert local[request_id]["uploaded"] == "2024-05-02 10:00:00"
    assert "last-update" in local[request_id]
    assert local[gone]["deleted"] == "2024-05-04 10:00:00"
    assert_matches_broker(setup, broker_server, request_id)


def test_a_request_the_broker_cannot_list_is_not_removed(setup: Setup, broker_server: BrokerServer) -> None:
    """The broker silently leaves definitions it cannot parse out of its filtered listing."""
    request_id = broker_server.create_request([setup.tag])
    assert setup.run("run").returncode == 0
    response = broker_server.admin.put(
        f"{broker_server.url}/broker/request/{request_id}",
        data=f"<queryRequest><query><principal><tags><tag>{setup.tag}</tag></tags>".encode(),
        headers={"Content-Type": "application/vnd.aktin.query.request+xml"},
    )
    assert response.ok, response.text
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"request {request_id} is missing from the broker's tagged listing but still exists" in done.stderr
    assert f"export_{request_id}.zip" in setup.remote_files()
    assert "deleted" not in status_entries((setup.state_dir / "status.xml").read_bytes())[request_id]
