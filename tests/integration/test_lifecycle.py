"""The operator's life cycle after the first delivery: a key change, a new destination, a
re-delivery on request and an audit of the folder, against the broker and a real sshd."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from aktin_sftp import crypto
from tests.conftest import Setup
from tests.integration.test_delivery import assert_matches_broker, status_entries
from tests.peers.broker import BrokerServer
from tests.peers.client import write_key
from tests.peers.pause import Paused
from tests.peers.sshd import SshServer


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


@pytest.fixture
def delivered(setup: Setup, broker_server: BrokerServer) -> list[int]:
    """Three requests delivered, and a fourth delivered and then removed."""
    ids = [broker_server.create_request([setup.tag]) for _ in range(4)]
    for request_id in ids:
        broker_server.nodes["Sachsenklinik"].submit(request_id, f"result {request_id}".encode())
    assert setup.run("run").returncode == 0
    broker_server.delete_request(ids[3])
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    return ids[:3]


def test_a_key_change_re_delivers_every_file_with_the_new_key_and_verify_is_clean(
    setup: Setup, broker_server: BrokerServer, delivered: list[int], tmp_path: Path
) -> None:
    removed = delivered[-1] + 1
    local = status_entries((setup.state_dir / "status.xml").read_bytes())
    assert {local[i]["key-id"] for i in delivered} == {key_id(setup.key)}
    new_key = write_key(tmp_path / "new.key")
    config = setup.variant(str(tmp_path / "fernet.key"), str(tmp_path / "new.key"))

    done = setup.run("run", config=config)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("the encryption key changed") == 1
    assert (
        f"the encryption key changed (was key id {key_id(setup.key)}, now key id {key_id(new_key)}): "
        "3 delivered files are delivered again"
    ) in done.stderr
    for request_id in delivered:
        assert f"re-delivered request {request_id} (encryption key changed" in done.stderr
    assert setup.remote_files() == sorted([f"export_{i}.zip" for i in delivered] + ["status.xml"])
    old_key, setup.key = setup.key, new_key
    for request_id in delivered:
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt((setup.folder / f"export_{request_id}.zip").read_bytes())
        assert_matches_broker(setup, broker_server, request_id)
    published = status_entries((setup.folder / "status.xml").read_bytes())
    assert {published[i]["key-id"] for i in delivered} == {key_id(new_key)}
    assert "key-id" in published[removed] and published[removed]["deleted"]
    for mode in ([], ["--deep"]):
        done = setup.run("verify", *mode, config=config)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verify: the folder matches the state (3 delivered files" in done.stdout
    assert "run finished: 0 delivered, 0 removed, 3 unchanged" in setup.run("run", config=config).stderr


def test_a_new_folder_gets_every_delivered_file_and_the_old_one_is_left_alone(
    setup: Setup, ssh_server: SshServer, delivered: list[int]
) -> None:
    old = sorted(p.name for p in setup.folder.iterdir())
    moved = ssh_server.folder(setup.tag + "-moved")
    config = setup.variant(f'folder = "{setup.remote_folder}"', f'folder = "{SshServer.remote(moved)}"')
    done = setup.run("run", config=config)
    assert done.returncode == 0, done.stderr
    assert "the SFTP destination changed" in done.stderr and "3 delivered files are delivered again" in done.stderr
    assert sorted(p.name for p in moved.iterdir()) == sorted([f"export_{i}.zip" for i in delivered] + ["status.xml"])
    assert sorted(p.name for p in setup.folder.iterdir()) == old
    assert setup.run("verify", config=config).returncode == 0


def test_a_request_gone_after_a_move_is_removed_nowhere_and_a_same_named_file_in_the_new_folder_stays(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer
) -> None:
    kept, gone = (broker_server.create_request([setup.tag]) for _ in range(2))
    assert setup.run("run").returncode == 0
    moved = ssh_server.folder(setup.tag + "-moved")
    theirs = moved / f"export_{gone}.zip"
    theirs.write_bytes(b"the recipient's own file")
    broker_server.set_tags(gone, ["another-tag"])
    config = setup.variant(f'folder = "{setup.remote_folder}"', f'folder = "{SshServer.remote(moved)}"')
    done = setup.run("run", config=config)
    assert done.returncode == 0, done.stderr
    assert theirs.read_bytes() == b"the recipient's own file"
    assert f"export_{gone}.zip" in setup.remote_files()
    assert "its file at that earlier destination is left as it is" in done.stderr
    assert sorted(p.name for p in moved.iterdir()) == sorted([f"export_{kept}.zip", f"export_{gone}.zip", "status.xml"])
    assert status_entries((setup.state_dir / "status.xml").read_bytes())[gone]["deleted"]
    assert "run finished: 0 delivered, 0 removed, 1 unchanged" in setup.run("run", config=config).stderr


def test_redeliver_on_request_next_run_or_now(setup: Setup, delivered: list[int]) -> None:
    first, second, third = delivered
    before = {i: (setup.folder / f"export_{i}.zip").read_bytes() for i in delivered}
    done = setup.run("redeliver", str(second))
    assert done.returncode == 0, done.stderr
    assert f"queued 1 requests for re-delivery (ids {second})" in done.stderr
    assert (setup.folder / f"export_{second}.zip").read_bytes() == before[second]
    assert "redeliver" in status_entries((setup.state_dir / "status.xml").read_bytes())[second]
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert f"re-delivered request {second} (re-delivery requested" in done.stderr
    assert "run finished: 1 delivered, 0 removed, 2 unchanged" in done.stderr
    assert (setup.folder / f"export_{second}.zip").read_bytes() != before[second]
    assert "redeliver" not in status_entries((setup.state_dir / "status.xml").read_bytes())[second]

    done = setup.run("redeliver", "--all", "--now")
    assert done.returncode == 0, done.stderr
    assert "run finished: 3 delivered" in done.stderr
    assert all((setup.folder / f"export_{i}.zip").read_bytes() != before[i] for i in (first, third))

    done = setup.run("redeliver", str(third), str(third + 1), "999999")
    assert done.returncode == 1
    assert f"requests {third + 1}, 999999 are not delivered at the moment" in done.stderr
    assert "redeliver" not in status_entries((setup.state_dir / "status.xml").read_bytes())[third]


def test_verify_reports_drift_and_repair_queues_only_what_a_run_can_put_right(setup: Setup, delivered: list[int]) -> None:
    gone, cut, tampered = delivered
    (setup.folder / f"export_{gone}.zip").unlink()
    token = (setup.folder / f"export_{cut}.zip").read_bytes()
    (setup.folder / f"export_{cut}.zip").write_bytes(token[:-10])
    changed = bytearray((setup.folder / f"export_{tampered}.zip").read_bytes())
    changed[200] = ord("A") if changed[200] != ord("A") else ord("B")
    (setup.folder / f"export_{tampered}.zip").write_bytes(bytes(changed))
    (setup.folder / "notes.txt").write_text("the recipient's own file")

    done = setup.run("verify")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"missing: {setup.remote_folder}/export_{gone}.zip (request {gone})" in lines
    assert any(line.startswith(f"wrong size: {setup.remote_folder}/export_{cut}.zip has ") for line in lines)
    assert f"unknown to the state: {setup.remote_folder}/notes.txt" in lines
    assert not any(str(tampered) in line for line in lines)
    assert "verify: 3 differences between the folder and the state" in done.stderr

    done = setup.run("verify", "--deep", "--repair")
    assert done.returncode == 1
    assert (
        f"damaged: {setup.remote_folder}/export_{tampered}.zip: its SHA-256 differs from what was uploaded "
        f"(request {tampered})"
    ) in done.stdout.splitlines()
    assert "4 differences" in done.stderr and "3 requests queued for re-delivery, unknown files left as they are" in done.stderr
    assert not list(setup.state_dir.glob(".aktin-broker-sftp.*"))
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert "run finished: 3 delivered" in done.stderr
    done = setup.run("verify", "--deep")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"unknown to the state: {setup.remote_folder}/notes.txt"]
    assert (setup.folder / "notes.txt").read_text() == "the recipient's own file"
    for request_id in delivered:
        assert setup.decrypt(f"export_{request_id}.zip")[:2] == b"PK"


def test_verify_repair_compares_and_queues_under_one_lock(setup: Setup, delivered: list[int], tmp_path: Path) -> None:
    gone = delivered[0]
    (setup.folder / f"export_{gone}.zip").unlink()
    repairing = Paused([*setup.command(), "verify", "--repair"], "verify:compared", tmp_path)
    meanwhile = setup.run("run")
    repairing.release()
    done = repairing.finish()
    assert meanwhile.returncode == 75, meanwhile.stderr
    assert done.returncode == 1 and "1 requests queued for re-delivery" in done.stderr
    assert "redeliver" in status_entries((setup.state_dir / "status.xml").read_bytes())[gone]
    assert f"re-delivered request {gone} (re-delivery requested" in setup.run("run").stderr
    assert f"export_{gone}.zip" in setup.remote_files()


def test_a_file_from_before_the_key_change_fails_the_deep_check_until_a_run(
    setup: Setup, delivered: list[int], tmp_path: Path
) -> None:
    write_key(tmp_path / "new.key")
    config = setup.variant(str(tmp_path / "fernet.key"), str(tmp_path / "new.key"))
    done = setup.run("verify", "--deep", config=config)
    assert done.returncode == 1
    assert f"encrypted with key id {key_id(setup.key)}, not the configured key" in done.stdout
    assert crypto.key_id(crypto.load_key(tmp_path / "fernet.key")) == key_id(setup.key)
