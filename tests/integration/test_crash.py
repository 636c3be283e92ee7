"""SIGKILL at every step of a delivery, then a run without faults: the result must equal a run
that was never interrupted, locally and in the recipient's folder."""

from __future__ import annotations

import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.conftest import Setup
from tests.peers.broker import BrokerServer, zip_entries
from tests.peers.client import write_config, write_key
from tests.peers.sshd import SshServer

STEPS = [
    "download",
    "encrypt",
    "upload:export",
    "rename:export",
    "state-write",
    "delivered",
    "upload:status.xml",
    "rename:status.xml",
]


def comparable_state(state_dir: Path) -> dict[int, tuple[str | None, ...]]:
    root = ET.fromstring((state_dir / "status.xml").read_bytes())
    return {
        int(e.findtext("id", "")): (e.findtext("completion"), e.findtext("fingerprint"), e.findtext("deleted") and "deleted")
        for e in root.findall("request-status")
    }


def comparable_folder(folder: Path, key: bytes) -> dict[str, object]:
    content: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "status.xml":
            content[path.name] = comparable_state(folder)
        else:
            content[path.name] = zip_entries(Fernet(key).decrypt(path.read_bytes()))
    return content


@pytest.mark.parametrize("step", STEPS)
def test_killed_run_then_clean_run_equals_an_uninterrupted_run(
    step: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    hospital = broker_server.nodes["Schwarzwaldklinik"]
    ids = [broker_server.create_request([setup.tag]) for _ in range(3)]
    for request_id in ids:
        # Large enough that download, encryption and upload each take several chunks.
        hospital.submit(request_id, os.urandom(3 << 20), "application/octet-stream")
    gone = broker_server.create_request([setup.tag])
    # An operator's own files where the state lives (upstream's WORKING_DIR is often /opt).
    setup.state_dir.mkdir()
    (setup.state_dir / "work").mkdir()
    (setup.state_dir / "work" / "operator.txt").write_text("mine")
    (setup.state_dir / "notes.txt").write_text("mine too")
    assert setup.run("run").returncode == 0
    broker_server.delete_request(gone)
    broker_server.nodes["Sachsenklinik"].submit(ids[0], b"second hospital")
    broker_server.nodes["Sachsenklinik"].submit(ids[1], b"second hospital")

    killed = setup.run("run", env={**os.environ, "AKTIN_SFTP_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = setup.run("run")
    assert again.returncode == 0, again.stderr

    # The same requests delivered once, without interruption, into another folder.
    reference_folder = ssh_server.folder(f"{setup.folder.name}-ref")
    key_file = tmp_path / "reference.key"
    reference_key = write_key(key_file)
    reference = write_config(
        tmp_path / "reference.toml", broker_server.url, ssh_server, reference_folder, setup.tag, key_file, tmp_path / "ref"
    )
    assert setup.run("run", config=reference).returncode == 0

    assert comparable_folder(setup.folder, setup.key) == {
        **comparable_folder(reference_folder, reference_key),
        # Our folder also saw the deleted request, which the reference never knew.
        "status.xml": {**comparable_state(tmp_path / "ref"), gone: comparable_state(setup.state_dir)[gone]},
    }
    assert comparable_state(setup.state_dir)[gone][2] == "deleted"
    assert sorted(p.name for p in setup.state_dir.iterdir()) == [
        "last-run.json", "lock", "notes.txt", "status.xml", "status.xml.prev", "work",
    ]
    assert [p.name for p in (setup.state_dir / "work").iterdir()] == ["operator.txt"]
    assert (setup.state_dir / "notes.txt").read_text() == "mine too"
