"""The recipient's `receive` against what real delivery runs put into a real sshd's folder: every
case a recipient meets (a changed request, a key change, a withdrawn request, a file replaced,
tampered with or cut short, a missing key, a stalled server, a hostile status.xml, a run killed
at any step), each judged by what the recipient sees: exit code, the lines, the inbox."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import crypto, state
from tests.conftest import ROOT, Setup
from tests.integration.test_faults import one_error_line
from tests.peers.broker import BrokerServer, zip_entries
from tests.peers.client import write_config, write_key
from tests.peers.faults import BrokerProxy, Rule
from tests.peers.pause import Paused
from tests.peers.sshd import PASSWORD, UID, USER, SshServer
from tests.peers.toxiproxy import Toxiproxy


def receive_config(
    directory: Path, key_files: list[Path], source: str, move_withdrawn: bool = False, mismatch_runs: int | None = None,
    inbox: Path | None = None, state_dir: Path | None = None,
) -> Path:
    path = directory / "receive.toml"
    keys = ", ".join(f'"{k}"' for k in key_files)
    runs = "" if mismatch_runs is None else f"mismatch_runs = {mismatch_runs}\n"
    path.write_text(f"""{source}
[keys]
files = [{keys}]

[inbox]
directory = "{inbox or directory / 'inbox'}"
move_withdrawn = {'true' if move_withdrawn else 'false'}

[state]
directory = "{state_dir or directory / 'receive-state'}"
{runs}""")
    path.chmod(0o600)
    return path


def local_source(folder: Path) -> str:
    return f'[source]\nfolder = "{folder}"\n'


def sftp_source(remote_folder: str, ssh_server: SshServer, timeout: float | None = None) -> str:
    # Written as tests/peers/client.py writes it, so that SshServer.via_proxy can rewrite it.
    wait = "" if timeout is None else f"timeout = {timeout:g}\n"
    return f"""[sftp]
host = "127.0.0.1"
port = {ssh_server.port}
username = "{USER}"
password = "{PASSWORD}"
known_hosts = "{ssh_server.known_hosts}"
folder = "{remote_folder}"
{wait}"""


def receive(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *receive_command(config), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env,
    )


def receive_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "aktin_sftp", "--config", str(config), "receive"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path; empty when there is no such folder."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def received(directory: Path) -> dict[str, dict[str, dict[str, object]]]:
    """received.json without the times of taking in, which differ from run to run."""
    data: dict[str, dict[str, dict[str, object]]] = json.loads((directory / "receive-state" / "received.json").read_text())
    for taken in data["received"].values():
        del taken["at"]
    return data


def state_files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "receive-state").iterdir())


def deliver(broker_server: BrokerServer, setup: Setup, count: int, hospital: str = "Schwarzwaldklinik") -> list[int]:
    ids = [broker_server.create_request([setup.tag]) for _ in range(count)]
    for request_id in ids:
        broker_server.nodes[hospital].submit(request_id, f"result {request_id} from {hospital}".encode())
    return ids


def delivered_and_copied(setup: Setup, broker_server: BrokerServer, tmp_path: Path, count: int) -> tuple[Path, Path]:
    """`count` requests delivered, the folder copied as a local source, and a recipient of it:
    the copy and the recipient's config."""
    deliver(broker_server, setup, count)
    assert setup.run("run").returncode == 0
    folder = tmp_path / "source"
    shutil.copytree(setup.folder, folder)
    return folder, recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(folder))


def key_id(key_file: Path) -> str:
    return crypto.key_id(crypto.load_key(key_file))


def recipient(
    tmp_path: Path, name: str, key_files: list[Path], source: str, move_withdrawn: bool = False, mismatch_runs: int | None = None
) -> Path:
    """A recipient's own directory with its config; its inbox and state directory go there too."""
    directory = tmp_path / name
    directory.mkdir()
    return receive_config(directory, key_files, source, move_withdrawn, mismatch_runs)


def test_what_a_run_delivered_arrives_in_the_inbox_byte_for_byte(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    ids = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    key_file = tmp_path / "fernet.key"
    delivered = tree(setup.folder)
    for name, source in (("local", local_source(setup.folder)), ("sftp", sftp_source(setup.remote_folder, ssh_server))):
        config = recipient(tmp_path, name, [key_file], source)
        directory = config.parent
        planned = receive(config, "--dry-run")
        assert planned.returncode == 0, planned.stderr
        assert planned.stdout.splitlines() == [
            *(f"would receive request {i} (new)" for i in ids),
            "receive --dry-run: 2 to receive, 0 withdrawn, 0 refused, 0 unchanged; nothing was changed",
        ]
        assert sorted(p.name for p in directory.iterdir()) == ["receive.toml"]
        assert "nothing received yet" in receive(config, "--status").stdout

        done = receive(config)
        assert done.returncode == 0, done.stderr
        assert "receive: 2 received, 0 withdrawn, 0 refused, 0 unchanged" in done.stderr
        for request_id in ids:
            assert re.search(rf"request {request_id}: received \S+export_{request_id}\.zip as ", done.stderr), done.stderr
        inbox = directory / "inbox"
        assert sorted(p.name for p in inbox.iterdir()) == sorted(f"export_{i}.zip" for i in ids)
        for request_id in ids:
            placed = inbox / f"export_{request_id}.zip"
            assert placed.read_bytes() == setup.decrypt(f"export_{request_id}.zip")
            assert zip_entries(placed.read_bytes()) == broker_server.export(request_id)
            assert placed.stat().st_mode & 0o777 == 0o600
        assert inbox.stat().st_mode & 0o777 == 0o700
        assert (directory / "receive-state").stat().st_mode & 0o777 == 0o700
        assert state_files(directory) == ["lock", "received.json"]

        listed = receive(config, "--status")
        assert listed.returncode == 0, listed.stderr
        assert [line.split(" received ")[0] for line in listed.stdout.splitlines()] == [
            f"request {i}: export_{i}.zip" for i in ids
        ]
        assert all(f"key id {key_id(key_file)}" in line for line in listed.stdout.splitlines())
        again = receive(config)
        assert again.returncode == 0 and "0 received, 0 withdrawn, 0 refused, 2 unchanged" in again.stderr
        assert "receive --dry-run: 0 to receive, 0 withdrawn, 0 refused, 2 unchanged" in receive(config, "--dry-run").stdout
    # Nothing is ever removed from, or written to, the source.
    assert tree(setup.folder) == delivered


def test_a_changed_and_a_withdrawn_request(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    changed, withdrawn, same = deliver(broker_server, setup, 3)
    assert setup.run("run").returncode == 0
    first = {i: setup.decrypt(f"export_{i}.zip") for i in (changed, withdrawn)}
    source = local_source(setup.folder)
    staying = recipient(tmp_path, "staying", [tmp_path / "fernet.key"], source)
    moving = recipient(tmp_path, "moving", [tmp_path / "fernet.key"], source, move_withdrawn=True)
    for config in (staying, moving):
        assert receive(config).returncode == 0

    # A second hospital completes one request; another loses its tag, so the sender withdraws it.
    broker_server.nodes["Sachsenklinik"].submit(changed, b"second hospital")
    broker_server.set_tags(withdrawn, [])
    assert setup.run("run").returncode == 0
    delivered = tree(setup.folder)
    for config, kept in ((staying, f"export_{withdrawn}.zip"), (moving, f"withdrawn/export_{withdrawn}.zip")):
        done = receive(config)
        assert done.returncode == 0, done.stderr
        assert "receive: 1 received, 1 withdrawn, 0 refused, 1 unchanged" in done.stderr
        assert re.search(rf"request {changed}: received ", done.stderr)
        assert f"request {withdrawn}: withdrawn by the sender on " in done.stderr
        assert ("left in the inbox" if config is staying else "moved") in done.stderr
        inbox = tree(config.parent / "inbox")
        assert sorted(inbox) == sorted([f"export_{changed}.zip", f"previous/export_{changed}.1.zip", kept, f"export_{same}.zip"])
        assert zip_entries(inbox[f"export_{changed}.zip"]) == broker_server.export(changed)
        assert inbox[f"previous/export_{changed}.1.zip"] == first[changed]
        assert inbox[kept] == first[withdrawn]
        assert (config.parent / "inbox" / "previous").stat().st_mode & 0o777 == 0o700

        # Reported once: the next run has nothing to say of it.
        again = receive(config)
        assert again.returncode == 0 and "0 received, 0 withdrawn, 0 refused, 3 unchanged" in again.stderr
        assert f"request {withdrawn}" not in again.stderr
        assert "withdrawn 20" in receive(config, "--status").stdout
    assert tree(setup.folder) == delivered

    # A third version: the second one is kept as well. The withdrawn request is tagged again,
    # with a second hospital's result, and so delivered again.
    second = setup.decrypt(f"export_{changed}.zip")
    broker_server.nodes["Bergklinik"].submit(changed, b"third hospital")
    broker_server.set_tags(withdrawn, [setup.tag])
    broker_server.nodes["Sachsenklinik"].submit(withdrawn, b"second hospital")
    assert setup.run("run").returncode == 0
    for config in (staying, moving):
        done = receive(config)
        assert done.returncode == 0 and "receive: 2 received, 0 withdrawn, 0 refused, 1 unchanged" in done.stderr, done.stderr
        placed = config.parent / "inbox" / f"export_{withdrawn}.zip"
        assert zip_entries(placed.read_bytes()) == broker_server.export(withdrawn)
    # The withdrawn file the staying recipient kept in the inbox gives way to the new delivery.
    assert tree(staying.parent / "inbox" / "previous") == {
        f"export_{changed}.1.zip": first[changed],
        f"export_{changed}.2.zip": second,
        f"export_{withdrawn}.1.zip": first[withdrawn],
    }

    # Withdrawn once more: the file withdrawn the first time is kept too.
    again_delivered = setup.decrypt(f"export_{withdrawn}.zip")
    broker_server.set_tags(withdrawn, [])
    assert setup.run("run").returncode == 0
    done = receive(moving)
    assert done.returncode == 0 and "receive: 0 received, 1 withdrawn" in done.stderr, done.stderr
    inbox = tree(moving.parent / "inbox")
    assert inbox[f"withdrawn/export_{withdrawn}.zip"] == again_delivered
    assert inbox[f"previous/export_{withdrawn}.1.zip"] == first[withdrawn]
    assert f"export_{withdrawn}.zip" not in inbox


def test_a_key_change_with_files_under_both_keys(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    old_key = tmp_path / "fernet.key"
    new_key = tmp_path / "fernet-2.key"
    write_key(new_key)
    first, held = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    both = recipient(tmp_path, "both", [old_key, new_key], local_source(setup.folder))
    assert receive(both).returncode == 0

    # The sender changes its key; one request's re-delivery fails, so it stays under the old key.
    proxy = BrokerProxy(broker_server.port)
    try:
        proxy.rules.append(Rule("POST", rf"/broker/export/request-bundle/{held}$", status=500))
        changed_key = setup.variant(str(old_key), str(new_key))
        changed_key.write_text(changed_key.read_text().replace(broker_server.url, proxy.url))
        (new_request,) = deliver(broker_server, setup, 1)
        assert setup.run("run", config=changed_key).returncode == 1
    finally:
        proxy.stop()
    entries = state.parse((setup.folder / "status.xml").read_bytes(), "status.xml")
    keys = {i: e.copy.key_id for i, e in entries.items() if e.copy}
    assert keys == {first: key_id(new_key), held: key_id(old_key), new_request: key_id(new_key)}

    done = receive(both)
    assert done.returncode == 0, done.stderr
    assert "receive: 2 received, 0 withdrawn, 0 refused, 1 unchanged" in done.stderr
    fresh = recipient(tmp_path, "fresh", [new_key, old_key], local_source(setup.folder))
    assert receive(fresh).returncode == 0
    for config in (both, fresh):
        inbox = config.parent / "inbox"
        for request_id in (first, held, new_request):
            assert zip_entries((inbox / f"export_{request_id}.zip").read_bytes()) == broker_server.export(request_id)
        assert {i: r["key_id"] for i, r in received(config.parent)["received"].items()} == {
            str(i): k for i, k in keys.items()
        }

    # Only the new key: the files under it come in, the other is an error naming the old key's id.
    only_new = recipient(tmp_path, "only-new", [new_key], local_source(setup.folder))
    refused = receive(only_new)
    assert refused.returncode == 78, refused.stderr
    line = next(line for line in refused.stderr.splitlines() if line.startswith(f"ERROR: request {held}:"))
    assert f"key id {key_id(old_key)}" in line and "ask the sender for that key file" in line
    assert "receive: 2 received, 0 withdrawn, 1 refused, 0 unchanged" in refused.stderr
    assert sorted(tree(only_new.parent / "inbox")) == sorted([f"export_{first}.zip", f"export_{new_request}.zip"])
    assert state_files(only_new.parent) == ["lock", "received.json"]
    # It stays refused, with the same exit, until that key is configured.
    assert receive(only_new).returncode == 78


@pytest.mark.parametrize("source", ["local", "sftp"])
@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_file_the_sender_replaces_or_removes_after_status_xml_was_read(
    change: str, source: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    # The second one is fetched after the first was refused, over the same SFTP channel.
    request_id, intact = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    config = recipient(
        tmp_path, "recipient", [tmp_path / "fernet.key"],
        local_source(setup.folder) if source == "local" else sftp_source(setup.remote_folder, ssh_server),
    )
    held = Paused(receive_command(config), "receive:status", tmp_path)
    if change == "replaced":
        # The sender's next run replaces the file (and then status.xml) while receive holds the old status.xml.
        broker_server.nodes["Sachsenklinik"].submit(request_id, b"second hospital")
        assert setup.run("run").returncode == 0
    else:
        (setup.folder / f"export_{request_id}.zip").unlink()
    held.release()
    done = held.finish()
    assert done.returncode == 0, done.stderr
    assert re.search(
        rf"WARNING: request {request_id}: \S+export_{request_id}\.zip .*: not taken in, tried again on the next run \(1 of 3\)",
        done.stderr,
    ), done.stderr
    # The new version holds one more hospital's result: longer than status.xml says.
    assert ("grew beyond the size status.xml says" if change == "replaced" else "is missing") in done.stderr
    assert "receive: 1 received, 0 withdrawn, 1 refused, 0 unchanged" in done.stderr
    assert tree(config.parent / "inbox") == {f"export_{intact}.zip": setup.decrypt(f"export_{intact}.zip")}
    assert state_files(config.parent) == ["lock", "received.json"]
    if change == "replaced":
        again = receive(config)
        assert again.returncode == 0, again.stderr
        assert "receive: 1 received, 0 withdrawn, 0 refused, 1 unchanged" in again.stderr
        placed = (config.parent / "inbox" / f"export_{request_id}.zip").read_bytes()
        assert zip_entries(placed) == broker_server.export(request_id)
        assert received(config.parent)["mismatches"] == {}


def reload_status(folder: Path) -> tuple[dict[int, state.Entry], Path]:
    path = folder / "status.xml"
    return state.parse(path.read_bytes(), str(path)), path


@pytest.mark.parametrize(("damage", "runs"), [("tampered", None), ("truncated", 1)])
def test_a_file_that_keeps_differing_from_status_xml_becomes_an_error_naming_the_request(
    damage: str, runs: int | None, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    token = setup.folder / f"export_{request_id}.zip"
    data = token.read_bytes()
    if damage == "tampered":
        middle = len(data) // 2
        token.write_bytes(data[:middle] + (b"A" if data[middle:middle + 1] != b"A" else b"B") + data[middle + 1:])
    else:
        token.write_bytes(data[: len(data) // 2])
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder), mismatch_runs=runs)
    # [state] mismatch_runs: 3 unless set.
    allowed = runs or 3
    for run in range(1, allowed):
        done = receive(config)
        assert done.returncode == 0, done.stderr
        assert f"WARNING: request {request_id}: " in done.stderr
        assert f"not taken in, tried again on the next run ({run} of {allowed})" in done.stderr
    failed = receive(config)
    assert failed.returncode == 65, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {request_id}:"))
    assert (f"in {allowed} runs in a row" in line) == (allowed > 1)
    assert f"ask the sender to deliver it again (aktin-broker-sftp redeliver {request_id})" in line
    assert ("has a SHA-256 other than status.xml says" if damage == "tampered" else "bytes, status.xml says") in line
    assert "ERROR: receive: 0 received, 0 withdrawn, 1 refused, 0 unchanged" in failed.stderr
    # Nothing decrypted, nothing left behind, the source as it was.
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock", "received.json"]
    assert len(token.read_bytes()) == (len(data) if damage == "tampered" else len(data) // 2)

    # What the error says to do mends it.
    assert setup.run("redeliver", "--now", str(request_id)).returncode == 0
    mended = receive(config)
    assert mended.returncode == 0, mended.stderr
    assert zip_entries((config.parent / "inbox" / f"export_{request_id}.zip").read_bytes()) == broker_server.export(request_id)
    assert received(config.parent)["mismatches"] == {}


def zip_of_unknown_method() -> bytes:
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("result.txt", b"a result")
    data = bytearray(bundle.getvalue())
    # Compression method 99 in the local header and in the central directory.
    data[8] = 99
    data[data.find(b"PK\x01\x02") + 10] = 99
    return bytes(data)


@pytest.mark.parametrize("content", ["tampered", "not-a-zip", "unreadable-zip"])
def test_a_file_that_matches_status_xml_but_does_not_open_is_refused_at_once(
    content: str, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    """status.xml vouches for a file it should not: the file is decrypted, and the MAC or the zip
    check refuses it; no plaintext stays anywhere."""
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    token = setup.folder / f"export_{request_id}.zip"
    if content == "tampered":
        plain = Fernet(setup.key).decrypt(token.read_bytes())
        # A token of other content under the same key, with the original MAC.
        forged = Fernet(setup.key).encrypt(plain[::-1])
        data = forged[:-44] + token.read_bytes()[-44:]
    else:
        data = Fernet(setup.key).encrypt(b"no zip at all" if content == "not-a-zip" else zip_of_unknown_method())
    token.write_bytes(data)
    entries, path = reload_status(setup.folder)
    vouched = entries[request_id].copy
    assert vouched is not None
    entries[request_id].copy = state.Copy(vouched.key_id, vouched.destination, len(data), hashlib.sha256(data).hexdigest())
    path.write_bytes(state.serialize(entries))

    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    failed = receive(config)
    assert failed.returncode == 65, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {request_id}:"))
    assert ("does not open with its key" if content == "tampered" else "decrypts, but not to a zip") in line
    assert "Traceback" not in failed.stderr
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock", "received.json"]
    assert received(config.parent) == {"received": {}, "mismatches": {}, "withdrawn_unreceived": {}}


def vouched_entry(request_id: str, key: str = "0123456789abcdef", deleted: str = "") -> str:
    return (
        f"<request-status><id>{request_id}</id><completion>1.0</completion><uploaded>2026-01-01 00:00:00</uploaded>"
        f"{deleted}<key-id>{key}</key-id><destination>x</destination><size>10</size><sha256>{'ab' * 32}</sha256>"
        "</request-status>"
    )


HOSTILE = {
    "doctype": f'<!DOCTYPE status [<!ENTITY a "aaaa">]><status>{vouched_entry("1")}</status>',
    "external-entity": f'<!DOCTYPE status [<!ENTITY a SYSTEM "file:///etc/passwd">]><status>{vouched_entry("&a;")}</status>',
    "dot-dot": f"<status>{vouched_entry('../../x')}</status>",
    "slash": f"<status>{vouched_entry('1/2')}</status>",
    "not-an-integer": f"<status>{vouched_entry('1 or 1=1')}</status>",
    "negative": f"<status>{vouched_entry('-1')}</status>",
    "key-id-with-a-line": f"<status>{vouched_entry('1', key='abc&#10;ERROR: forged')}</status>",
    "deleted-with-a-line": f"<status>{vouched_entry('1', deleted='<deleted>x&#10;ERROR: forged</deleted>')}</status>",
    "sha256-a-path": f"<status>{vouched_entry('1').replace('ab' * 32, '../' * 21 + 'x')}</status>",
    "not-status": "<statuses/>",
}


@pytest.mark.parametrize("content", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_status_xml_is_refused_as_a_whole(content: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "status.xml").write_text(content)
    key_file = tmp_path / "fernet.key"
    write_key(key_file)
    config = recipient(tmp_path, "recipient", [key_file], local_source(source))
    failed = receive(config)
    assert failed.returncode == 65, failed.stderr
    line = one_error_line(failed.stderr)
    assert "nothing was taken in" in line
    # The sender's text never makes a line of its own.
    assert not [n for n in failed.stderr.splitlines() if "forged" in n and n != line]
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock"]
    assert sorted(p.name for p in source.iterdir()) == ["status.xml"]


@pytest.mark.parametrize("odd", ["symlink", "fifo", "growing"])
def test_something_other_than_the_listed_file_under_its_name_is_not_read_on_and_on(
    odd: str, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    """The upload folder is writable by the sender's login: a name listed as a file may be a
    symbolic link to any file of the recipient's machine, a FIFO, or a file that keeps growing,
    by the time it is read: none is read further than status.xml's size, none hangs the run."""
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    held = Paused(receive_command(config), "receive:status", tmp_path)
    token = setup.folder / f"export_{request_id}.zip"
    if odd == "symlink":
        token.unlink()
        token.symlink_to("/dev/zero")
    elif odd == "fifo":
        token.unlink()
        os.mkfifo(token)
    else:
        token.unlink()
        # Another process keeps writing it: as long as the read goes on.
        writer = subprocess.Popen(["sh", "-c", f"while :; do head -c 65536 /dev/zero; sleep 0.01; done > {token}"])
        # Already larger than status.xml's few hundred bytes when the run reads it, not missing or short.
        deadline = time.monotonic() + 10
        while not (token.exists() and token.stat().st_size >= 65536) and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        held.release()
        done = held.finish(30)
    finally:
        if odd == "growing":
            writer.kill()
            writer.wait()
    assert done.returncode == 0, done.stderr
    expected = {"symlink": "is a symbolic link", "fifo": "is not a regular file", "growing": "grew beyond the size"}[odd]
    assert re.search(rf"request {request_id}: \S+ {expected}.*tried again on the next run \(1 of 3\)", done.stderr), done.stderr
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock", "received.json"]


def test_one_run_at_a_time(setup: Setup, broker_server: BrokerServer, tmp_path: Path) -> None:
    deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    held = Paused(receive_command(config), "receive:status", tmp_path)
    second = receive(config)
    assert second.returncode == 75, second.stderr
    assert "another run holds" in one_error_line(second.stderr)
    held.release()
    first = held.finish()
    assert first.returncode == 0 and "receive: 1 received" in first.stderr, first.stderr


def test_two_recipients_sharing_an_inbox_take_turns(setup: Setup, broker_server: BrokerServer, tmp_path: Path) -> None:
    """Two configs, each with its own state, one inbox: one run at a time in that inbox too, so
    neither removes the other's unfinished file as a leftover."""
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    shared = tmp_path / "inbox"
    configs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        configs.append(receive_config(tmp_path / name, [tmp_path / "fernet.key"], local_source(setup.folder), inbox=shared))
    held = Paused(receive_command(configs[0]), "receive:decrypted", tmp_path)
    other = receive(configs[1])
    assert other.returncode == 75, other.stderr
    assert f"another run holds {shared}" in one_error_line(other.stderr)
    held.release()
    first = held.finish()
    assert first.returncode == 0 and "receive: 1 received" in first.stderr, first.stderr
    name = f"export_{request_id}.zip"
    assert tree(shared) == {name: setup.decrypt(name)}


def test_a_link_under_the_unfinished_name_never_takes_plaintext_out_of_the_inbox(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    inbox = config.parent / "inbox"
    inbox.mkdir(mode=0o700)
    outside = config.parent / "outside.zip"
    (inbox / f".export_{request_id}.zip.partial").symlink_to(f"../{outside.name}")
    done = receive(config)
    assert done.returncode == 0, done.stderr
    assert not outside.exists()
    placed = inbox / f"export_{request_id}.zip"
    assert not placed.is_symlink()
    assert tree(inbox) == {placed.name: setup.decrypt(placed.name)}


def test_a_link_put_under_the_unfinished_name_during_a_run_is_refused_and_left_alone(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    """Put there after the run cleared its leftovers: by something else, which it is not for
    receive to undo."""
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    inbox = config.parent / "inbox"
    outside = config.parent / "outside.zip"
    held = Paused(receive_command(config), "receive:fetched", tmp_path)
    link = inbox / f".export_{request_id}.zip.partial"
    link.symlink_to(f"../{outside.name}")
    held.release()
    failed = held.finish()
    assert failed.returncode == 78, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {request_id}:"))
    assert f"{link} is already there" in line, line
    assert "receive: 0 received, 0 withdrawn, 1 refused, 0 unchanged" in failed.stderr
    assert not outside.exists()
    assert os.readlink(link) == f"../{outside.name}"
    assert state_files(config.parent) == ["lock", "received.json"]


@pytest.mark.parametrize("odd", ["fifo", "link-to-a-device"])
def test_something_other_than_a_file_under_the_name_in_the_inbox_is_refused_in_time_and_left_alone(
    odd: str, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    inbox = config.parent / "inbox"
    inbox.mkdir(mode=0o700)
    placed = inbox / f"export_{request_id}.zip"
    if odd == "fifo":
        os.mkfifo(placed, 0o600)
    else:
        placed.symlink_to("/dev/zero")
    started = time.monotonic()
    failed = receive(config, timeout=30)
    assert time.monotonic() - started < 10, failed.stderr
    assert failed.returncode == 78, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {request_id}:"))
    assert f"{placed} is not a regular file" in line and "move it away" in line
    assert "receive: 0 received, 0 withdrawn, 1 refused, 0 unchanged" in failed.stderr
    assert stat.S_ISFIFO(placed.lstat().st_mode) if odd == "fifo" else placed.is_symlink()
    assert [p.name for p in inbox.iterdir()] == [placed.name]
    assert state_files(config.parent) == ["lock", "received.json"]
    assert received(config.parent)["received"] == {}

    # Once it is moved away, the next run places the file.
    placed.unlink()
    done = receive(config)
    assert done.returncode == 0, done.stderr
    assert tree(inbox) == {placed.name: setup.decrypt(placed.name)}


@pytest.mark.parametrize("source", ["local", "sftp"])
def test_a_file_this_user_cannot_read_is_refused_and_the_others_come_in(
    source: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    ids = deliver(broker_server, setup, 3)
    assert setup.run("run").returncode == 0
    unreadable = setup.folder / f"export_{ids[1]}.zip"
    mode = unreadable.stat().st_mode
    prefix: tuple[str, ...] = ()
    if source == "local":
        # Root reads any file: a copy of root's own, read without the capabilities that let root
        # read past a file's mode.
        shutil.copytree(setup.folder, tmp_path / "source")
        unreadable = tmp_path / "source" / unreadable.name
        config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(unreadable.parent))
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all")
    else:
        config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], sftp_source(setup.remote_folder, ssh_server))
    unreadable.chmod(0)
    failed = receive(config, prefix=prefix)
    assert failed.returncode == 78, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {ids[1]}:"))
    assert f"{unreadable.name} cannot be read by this user (permission denied)" in line, line
    assert "receive: 2 received, 0 withdrawn, 1 refused, 0 unchanged" in failed.stderr
    inbox = config.parent / "inbox"
    assert sorted(tree(inbox)) == [f"export_{ids[0]}.zip", f"export_{ids[2]}.zip"]
    assert state_files(config.parent) == ["lock", "received.json"]

    unreadable.chmod(mode)
    done = receive(config, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert "receive: 1 received, 0 withdrawn, 0 refused, 2 unchanged" in done.stderr
    assert tree(inbox) == {f"export_{i}.zip": setup.decrypt(f"export_{i}.zip") for i in ids}


def test_a_status_xml_this_user_cannot_read_takes_nothing_in(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    folder, config = delivered_and_copied(setup, broker_server, tmp_path, 1)
    (folder / "status.xml").chmod(0)
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all")
    failed = receive(config, prefix=prefix)
    assert failed.returncode == 78, failed.stderr
    line = one_error_line(failed.stderr)
    assert f"{folder / 'status.xml'} cannot be read by this user (permission denied); nothing was taken in" in line, line
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock"]


@pytest.mark.parametrize(
    "case", ["inbox-open-to-others", "state-open-to-its-group", "inbox-in-the-source", "state-in-the-source"]
)
def test_plaintext_and_state_go_only_where_no_one_else_reaches_them(
    case: str, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    directory = tmp_path / "recipient"
    directory.mkdir()
    inbox, state_dir = directory / "inbox", directory / "receive-state"
    if case == "inbox-open-to-others":
        inbox.mkdir()
        inbox.chmod(0o755)
    elif case == "state-open-to-its-group":
        state_dir.mkdir()
        state_dir.chmod(0o770)
    elif case == "inbox-in-the-source":
        inbox = setup.folder / "inbox"
    else:
        # The same folder by another path.
        (directory / "upload").symlink_to(setup.folder)
        state_dir = directory / "upload" / "state"
    config = receive_config(directory, [tmp_path / "fernet.key"], local_source(setup.folder), inbox=inbox, state_dir=state_dir)
    delivered = tree(setup.folder)
    for args in ((), ("--dry-run",)):
        failed = receive(config, *args)
        assert failed.returncode == 78, failed.stderr
        line = one_error_line(failed.stderr)
        if case.endswith("-in-the-source"):
            key = "[inbox] directory" if case.startswith("inbox") else "[state] directory"
            where = inbox if case.startswith("inbox") else state_dir
            assert f"{key} {where} is inside [source] folder {setup.folder}" in line, line
        else:
            where = inbox if case.startswith("inbox") else state_dir
            assert f"{where} is open to other users (mode {where.stat().st_mode & 0o777:o})" in line, line
            assert f"run 'chmod 700 {where}'" in line, line
        assert tree(setup.folder) == delivered
        assert tree(inbox) == {}


def test_an_inbox_file_this_user_cannot_read_refuses_that_request_only(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    (changed,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    # Read without the capabilities that let root read past a file's mode: a copy of root's own.
    folder = tmp_path / "source"
    shutil.copytree(setup.folder, folder)
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all")
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(folder))
    assert receive(config, prefix=prefix).returncode == 0
    broker_server.nodes["Sachsenklinik"].submit(changed, b"second hospital")
    (new,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    shutil.copytree(setup.folder, folder, dirs_exist_ok=True)
    # Copied in by root, say, with no permissions for anyone.
    placed = config.parent / "inbox" / f"export_{changed}.zip"
    before = placed.read_bytes()
    placed.chmod(0)

    failed = receive(config, prefix=prefix)
    assert failed.returncode == 78, failed.stderr
    line = next(line for line in failed.stderr.splitlines() if line.startswith(f"ERROR: request {changed}:"))
    assert f"{placed} cannot be read by this user" in line, line
    assert "receive: 1 received, 0 withdrawn, 1 refused, 0 unchanged" in failed.stderr
    assert placed.read_bytes() == before
    assert (config.parent / "inbox" / f"export_{new}.zip").read_bytes() == setup.decrypt(f"export_{new}.zip")

    placed.chmod(0o600)
    done = receive(config, prefix=prefix)
    assert done.returncode == 0 and "receive: 1 received, 0 withdrawn, 0 refused, 1 unchanged" in done.stderr, done.stderr
    assert (config.parent / "inbox" / "previous" / f"export_{changed}.1.zip").read_bytes() == before


@pytest.mark.parametrize("folder", ["previous", "withdrawn"])
def test_an_inbox_folder_open_to_others_is_refused_before_anything_is_taken_in(
    folder: str, setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder), move_withdrawn=True)
    inbox = config.parent / "inbox"
    inbox.mkdir(mode=0o700)
    (inbox / folder).mkdir()
    (inbox / folder).chmod(0o750)
    for args in ((), ("--dry-run",)):
        failed = receive(config, *args)
        assert failed.returncode == 78, failed.stderr
        line = one_error_line(failed.stderr)
        assert f"{inbox / folder} is open to other users (mode 750)" in line, line
        assert [p.name for p in inbox.iterdir()] == [folder]


def test_a_dry_run_names_a_missing_key_as_a_real_run_does_and_creates_nothing(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    (request_id,) = deliver(broker_server, setup, 1)
    assert setup.run("run").returncode == 0
    new_key = tmp_path / "fernet-2.key"
    write_key(new_key)
    config = recipient(tmp_path, "only-new", [new_key], local_source(setup.folder))
    planned = receive(config, "--dry-run")
    assert planned.returncode == 78, planned.stderr
    line = next(line for line in planned.stderr.splitlines() if line.startswith(f"ERROR: request {request_id}:"))
    assert f"key id {key_id(tmp_path / 'fernet.key')}" in line and "ask the sender for that key file" in line
    assert "ERROR: receive --dry-run: 0 to receive, 0 withdrawn, 1 refused, 0 unchanged; nothing was changed" in planned.stderr
    assert planned.stdout == ""
    assert sorted(p.name for p in config.parent.iterdir()) == ["receive.toml"]
    real = receive(config)
    assert real.returncode == 78 and line in real.stderr, real.stderr


def test_plaintext_a_killed_run_left_goes_before_the_source_is_read(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    folder, config = delivered_and_copied(setup, broker_server, tmp_path, 1)
    killed = receive(config, env={**os.environ, "AKTIN_SFTP_CRASH_AT": "receive:decrypted"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    inbox = config.parent / "inbox"
    assert [p.name for p in inbox.iterdir() if p.name.endswith(".partial")], "the killed run left no plaintext"
    # The source fails this run before it gets to any request.
    (folder / "status.xml").unlink()
    failed = receive(config)
    assert failed.returncode == 1, failed.stderr
    assert "status.xml is missing" in one_error_line(failed.stderr)
    assert tree(inbox) == {}
    assert state_files(config.parent) == ["lock"]


def test_a_request_withdrawn_before_it_was_received_is_reported_once(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    kept, withdrawn = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    broker_server.set_tags(withdrawn, [])
    assert setup.run("run").returncode == 0
    entries, _ = reload_status(setup.folder)
    assert entries[withdrawn].deleted is not None
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    planned = receive(config, "--dry-run")
    assert planned.returncode == 0 and f"would report request {withdrawn} as withdrawn" in planned.stdout, planned.stderr
    done = receive(config)
    assert done.returncode == 0, done.stderr
    assert "receive: 1 received, 1 withdrawn, 0 refused, 0 unchanged" in done.stderr
    line = next(line for line in done.stderr.splitlines() if f"request {withdrawn}:" in line)
    assert f"withdrawn by the sender on {entries[withdrawn].deleted} before this recipient received it" in line, line
    assert sorted(tree(config.parent / "inbox")) == [f"export_{kept}.zip"]
    again = receive(config)
    assert again.returncode == 0 and "receive: 0 received, 0 withdrawn, 0 refused, 2 unchanged" in again.stderr, again.stderr
    assert f"request {withdrawn}" not in again.stderr


TIMEOUT = 1.0
# Three times the timeout, and the start and end of a Python process.
BOUND = 3 * TIMEOUT + 1.5


@pytest.mark.parametrize("step", [None, "receive:status"], ids=["login", "download"])
def test_a_stalled_sftp_source_ends_in_time_and_the_next_run_takes_it_in(
    step: str | None, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy,
    tmp_path: Path,
) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(2)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(4 << 20), "application/octet-stream")
    assert setup.run("run").returncode == 0
    name = f"receive-{setup.tag}"[:60]
    port = toxiproxy.proxy(name, ssh_server.port)
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], sftp_source(setup.remote_folder, ssh_server, TIMEOUT))
    ssh_server.via_proxy(config, port)
    stall = ("upstream", "downstream")
    try:
        if step is None:
            for stream in stall:
                toxiproxy.toxic(name, "timeout", stream, timeout=0)
            started = time.monotonic()
            failed = receive(config)
        else:
            held = Paused(receive_command(config), step, tmp_path)
            for stream in stall:
                toxiproxy.toxic(name, "timeout", stream, timeout=0)
            started = held.release()
            failed = held.finish()
        took = time.monotonic() - started
    finally:
        toxiproxy.heal(name)
    assert failed.returncode == 69, failed.stderr
    assert took < BOUND, f"took {took:.1f} s: {failed.stderr}"
    assert "[sftp] timeout = 1 s" in one_error_line(failed.stderr)
    assert tree(config.parent / "inbox") == {}
    assert state_files(config.parent) == ["lock"]

    # The lock is free and nothing half-done is in the way.
    again = receive(config)
    toxiproxy.remove(name)
    assert again.returncode == 0, again.stderr
    assert "receive: 2 received" in again.stderr
    for request_id in ids:
        assert (config.parent / "inbox" / f"export_{request_id}.zip").read_bytes() == setup.decrypt(f"export_{request_id}.zip")
    assert state_files(config.parent) == ["lock", "received.json"]


def test_a_file_replaced_by_a_much_larger_one_is_not_downloaded_past_the_size_status_xml_vouches_for(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    replaced, intact = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    name = f"receive-large-{setup.tag}"[:60]
    port = toxiproxy.proxy(name, ssh_server.port)
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], sftp_source(setup.remote_folder, ssh_server))
    ssh_server.via_proxy(config, port)
    # The login, the listing, status.xml and both vouched files are a few KiB: far below this,
    # which is far below the file that takes one's place, and below the 2 MiB of reads a
    # download may have in flight. Past it, the connection is cut.
    toxiproxy.toxic(name, "limit_data", "downstream", bytes=256 << 10)
    try:
        held = Paused(receive_command(config), "receive:status", tmp_path)
        larger = setup.folder / ".larger"
        with open(larger, "wb") as handle:
            handle.truncate(64 << 20)
        os.replace(larger, setup.folder / f"export_{replaced}.zip")
        held.release()
        done = held.finish()
    finally:
        toxiproxy.remove(name)
    assert done.returncode == 0, done.stderr
    assert re.search(
        rf"WARNING: request {replaced}: \S+ grew beyond the size status.xml says while being read: not taken in, "
        r"tried again on the next run \(1 of 3\)", done.stderr,
    ), done.stderr
    # The same connection carried the next file.
    assert "receive: 1 received, 0 withdrawn, 1 refused, 0 unchanged" in done.stderr
    assert tree(config.parent / "inbox") == {f"export_{intact}.zip": setup.decrypt(f"export_{intact}.zip")}


def test_a_request_listed_without_size_and_sha256_is_not_taken_in_and_counted_as_refused(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    """As the upstream uploader lists what it delivered; the sender's next run delivers it anew,
    with both, so it is a warning, not an error."""
    unvouched, vouched = deliver(broker_server, setup, 2)
    assert setup.run("run").returncode == 0
    folder = tmp_path / "source"
    shutil.copytree(setup.folder, folder)
    entries, path = reload_status(folder)
    entries[unvouched].copy = None
    path.write_bytes(state.serialize(entries))
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(folder))
    for args, summary in (
        (("--dry-run",), "receive --dry-run: 1 to receive, 0 withdrawn, 1 refused, 0 unchanged"),
        ((), "receive: 1 received, 0 withdrawn, 1 refused, 0 unchanged"),
    ):
        done = receive(config, *args)
        assert done.returncode == 0, done.stderr
        assert f"WARNING: request {unvouched}: {path} lists no size and SHA-256 for it" in done.stderr
        assert summary in done.stdout + done.stderr
    assert sorted(tree(config.parent / "inbox")) == [f"export_{vouched}.zip"]


def test_a_full_disk_while_decrypting_leaves_no_plaintext_and_the_next_run_takes_it_in(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(2 << 20), "application/octet-stream")
    assert setup.run("run").returncode == 0
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], local_source(setup.folder))
    inbox = config.parent / "inbox"
    inbox.mkdir(mode=0o700)
    # The inbox on a 1 MiB file system, in a mount namespace of this run's own; what is left in
    # it is listed before the namespace goes.
    script = f'mount -t tmpfs -o size=1m,mode=700 tmpfs {inbox} && "$@"; code=$?; ls -A {inbox}; exit $code'
    failed = receive(config, prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"))
    assert failed.returncode == 1, failed.stderr
    assert "No space left on device" in one_error_line(failed.stderr)
    assert failed.stdout == ""
    assert state_files(config.parent) == ["lock"]

    done = receive(config)
    assert done.returncode == 0 and "receive: 1 received" in done.stderr, done.stderr
    name = f"export_{request_id}.zip"
    assert tree(inbox) == {name: setup.decrypt(name)}


@pytest.mark.parametrize("source", ["local", "sftp"])
def test_a_full_disk_in_the_state_directory_is_named_as_such_not_blamed_on_the_source(
    source: str, setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, tmp_path: Path
) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(2 << 20), "application/octet-stream")
    assert setup.run("run").returncode == 0
    where = local_source(setup.folder) if source == "local" else sftp_source(setup.remote_folder, ssh_server)
    config = recipient(tmp_path, "recipient", [tmp_path / "fernet.key"], where)
    state_dir = config.parent / "receive-state"
    state_dir.mkdir(mode=0o700)
    # The state directory on a 1 MiB file system, too small for the downloaded token.
    script = f'mount -t tmpfs -o size=1m,mode=700 tmpfs {state_dir} && "$@"; code=$?; ls -A {state_dir}; exit $code'
    failed = receive(config, prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"))
    assert failed.returncode == 1, failed.stderr
    line = one_error_line(failed.stderr)
    assert "cannot be read" not in line, line
    assert f"[state] directory {state_dir}" in line and "No space left on device" in line, line
    # Only the lock is left on it.
    assert failed.stdout.split() == ["lock"]
    assert tree(config.parent / "inbox") == {}

    done = receive(config)
    assert done.returncode == 0 and "receive: 1 received" in done.stderr, done.stderr
    name = f"export_{request_id}.zip"
    assert tree(config.parent / "inbox") == {name: setup.decrypt(name)}


# Every checkpoint of a receive run, in the order a run meets them first: the first fetched
# request is a changed one (so the previous version is kept), then a new one; one is withdrawn.
CRASH_STEPS = [
    "sftp:listing",
    "sftp:download",
    "receive:status",
    "receive:withdrawn",
    "state-write",
    "receive:fetched",
    "receive:decrypted",
    "receive:kept-previous",
    "receive:placed",
    "receive:recorded",
]


@dataclass
class Rounds:
    """The sender's folder after two delivery runs: `first`, then `second`, in which one request
    changed (a second hospital), one is new and one was withdrawn (deleted at the broker)."""

    first: Path
    second: Path
    key_file: Path
    # A recipient that received `first`, and one that received `first`, then `second`.
    received_first: Path
    reference: Path


def copy_into(snapshot: Path, folder: Path) -> None:
    """Makes `folder` what the sender made of it in `snapshot`, as the sender does: every file
    complete under its final name (renamed into place), withdrawn files removed, status.xml last."""
    for path in sorted(snapshot.iterdir(), key=lambda p: p.name == "status.xml"):
        partial = folder / f".{path.name}.part"
        shutil.copyfile(path, partial)
        os.chown(partial, UID, UID)
        os.replace(partial, folder / path.name)
    for path in folder.iterdir():
        if not (snapshot / path.name).exists():
            path.unlink()


@pytest.fixture(scope="module")
def rounds(broker_server: BrokerServer, ssh_server: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rounds]:
    base = tmp_path_factory.mktemp("receive-rounds")
    tag = f"receive-crash-{os.getpid()}"
    folder = ssh_server.folder(tag)
    key_file = base / "fernet.key"
    write_key(key_file)
    config = write_config(base / "sftp.toml", broker_server.url, ssh_server, folder, tag, key_file, base / "state")
    run = [sys.executable, "-m", "aktin_sftp", "--config", str(config), "run"]
    ids = [broker_server.create_request([tag]) for _ in range(3)]
    for request_id in ids:
        # Several chunks each, so that the fetch and the decrypt take a while.
        broker_server.nodes["Schwarzwaldklinik"].submit(request_id, os.urandom(2 << 20), "application/octet-stream")
    subprocess.run(run, check=True, capture_output=True, cwd=ROOT, timeout=120)
    first = base / "first"
    shutil.copytree(folder, first)
    broker_server.nodes["Sachsenklinik"].submit(ids[0], b"second hospital")
    broker_server.delete_request(ids[1])
    new = broker_server.create_request([tag])
    broker_server.nodes["Schwarzwaldklinik"].submit(new, b"a new one")
    subprocess.run(run, check=True, capture_output=True, cwd=ROOT, timeout=120)
    second = base / "second"
    shutil.copytree(folder, second)
    # The same two rounds received without interruption.
    reference = recipient(base, "reference", [key_file], local_source(first), move_withdrawn=True)
    assert receive(reference).returncode == 0
    received_first = base / "received-first"
    shutil.copytree(reference.parent, received_first)
    reference.write_text(reference.read_text().replace(str(first), str(second)))
    done = receive(reference)
    assert done.returncode == 0 and "receive: 2 received, 1 withdrawn, 0 refused, 1 unchanged" in done.stderr, done.stderr
    yield Rounds(first, second, key_file, received_first, reference.parent)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_receive_killed_at_any_step_then_run_again_ends_as_an_uninterrupted_one(
    step: str, rounds: Rounds, ssh_server: SshServer, tmp_path: Path
) -> None:
    folder = ssh_server.folder(f"receive-crash-{os.getpid()}-{CRASH_STEPS.index(step)}")
    copy_into(rounds.second, folder)
    # As after a receive of the first round (the same inbox and state), now over SFTP.
    shutil.copytree(rounds.received_first, tmp_path / "recipient")
    config = receive_config(
        tmp_path / "recipient", [rounds.key_file], sftp_source(SshServer.remote(folder), ssh_server), move_withdrawn=True
    )

    killed = receive(config, env={**os.environ, "AKTIN_SFTP_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = receive(config)
    assert again.returncode == 0, again.stderr

    assert tree(config.parent / "inbox") == tree(rounds.reference / "inbox")
    assert received(config.parent) == received(rounds.reference)
    assert state_files(config.parent) == ["lock", "received.json"]
    # Nothing of the source was touched.
    assert tree(folder) == tree(rounds.second)
