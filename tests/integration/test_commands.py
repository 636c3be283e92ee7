"""The operator's commands and exit codes, against the real broker and sshd."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Setup
from tests.peers import free_port
from tests.peers.broker import NODE_KEYS, BrokerServer, zip_entries
from tests.peers.sshd import PASSWORD, SshServer


def test_check_reaches_both_peers_and_changes_nothing(setup: Setup, broker_server: BrokerServer) -> None:
    broker_server.create_request([setup.tag])
    done = setup.run("check")
    assert done.returncode == 0, done.stderr
    assert f"version {broker_server.version}, 1 requests tagged" in done.stdout
    assert "host key verified, logged in" in done.stdout
    assert "cipher" not in done.stdout
    assert setup.remote_files() == []
    assert not setup.state_dir.exists()
    done = setup.run("check", "--speed")
    assert done.returncode == 0, done.stderr
    speed = r"sftp cipher aes\d+-\w+(@openssh.com)?, upload \d+ MB/s \(32 MiB probe\)"
    assert re.search(speed, done.stdout), done.stdout
    assert setup.remote_files() == []


def test_login_with_a_private_key(setup: Setup, ssh_server: SshServer) -> None:
    ssh_server.client_key.chmod(0o600)
    config = setup.variant(f'password = "{PASSWORD}"', f'private_key_file = "{ssh_server.client_key}"')
    done = setup.run("check", config=config)
    assert done.returncode == 0, done.stderr


def test_wrong_password_is_a_config_error(setup: Setup) -> None:
    done = setup.run("run", config=setup.variant(f'password = "{PASSWORD}"', 'password = "wrong-password"'))
    assert done.returncode == 78
    assert "rejected the login of 'aktinsftp'; check [sftp] password" in done.stderr
    assert "wrong-password" not in done.stderr


def test_unknown_or_changed_host_key_is_refused_and_never_learned(setup: Setup, ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    done = setup.run("check", config=setup.variant(str(ssh_server.known_hosts), str(empty)))
    assert done.returncode == 78
    assert "is not in" in done.stderr and "add its verified host key" in done.stderr
    assert empty.read_text() == ""

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{ssh_server.port} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n")
    done = setup.run("run", config=setup.variant(str(ssh_server.known_hosts), str(changed)))
    assert done.returncode == 78
    assert "presented a host key that differs" in done.stderr
    assert setup.remote_files() == []


def test_unreachable_peers_exit_69(setup: Setup, broker_server: BrokerServer, ssh_server: SshServer) -> None:
    port = free_port()
    done = setup.run("run", config=setup.variant(broker_server.url, f"http://127.0.0.1:{port}"))
    assert done.returncode == 69
    assert f"broker at http://127.0.0.1:{port} is unreachable" in done.stderr
    done = setup.run("check", config=setup.variant(f"port = {ssh_server.port}", f"port = {port}"))
    assert done.returncode == 69
    assert f"SFTP server 127.0.0.1:{port} is unreachable" in done.stderr


def test_a_url_that_is_no_broker_is_a_config_error(setup: Setup, broker_server: BrokerServer) -> None:
    config = setup.variant(f'url = "{broker_server.url}"', f'url = "{broker_server.url}/aktin"')
    for command in ("check", "run"):
        done = setup.run(command, config=config)
        assert done.returncode == 78, done.stderr
        assert f"with HTTP 404: {broker_server.url}/aktin does not look like an AKTIN Broker; check [broker] url" in done.stderr


def test_options_go_before_or_after_the_command(setup: Setup) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aktin_sftp", "status", "-v", "--config", str(setup.config)], capture_output=True, text=True
    )
    assert done.returncode == 78
    assert f"state directory {setup.state_dir} does not exist: no run has used it; check [state] directory" in done.stderr
    setup.state_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "aktin_sftp", "status", "--config", str(setup.config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "(nothing delivered yet)" in done.stdout


def test_a_node_key_instead_of_an_admin_key_is_a_config_error(setup: Setup) -> None:
    done = setup.run("run", config=setup.variant('api_key = "xxxAdmin1234"', f'api_key = "{NODE_KEYS["Bergklinik"]}"'))
    assert done.returncode == 78
    assert "broker refused the API key (HTTP 401)" in done.stderr
    assert NODE_KEYS["Bergklinik"] not in done.stderr


def test_a_config_error_exits_78_before_any_network_call(setup: Setup) -> None:
    done = setup.run("run", config=setup.variant("timeout = 60", "timeout = 60\ncolour = 1"))
    assert done.returncode == 78
    known = "api_key, api_key_file, ca_bundle, max_download_mib, parallel, tag, timeout, url"
    expected = f"ERROR: {setup.config.with_name('variant.toml')}: [broker] colour: unknown key (known: {known})"
    assert done.stderr.strip().splitlines() == [expected]


def test_a_second_run_exits_75_while_one_holds_the_lock(setup: Setup, broker_server: BrokerServer) -> None:
    broker_server.create_request([setup.tag])
    setup.state_dir.mkdir()
    with open(setup.state_dir / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = setup.run("run")
    assert done.returncode == 75
    assert "another run holds" in done.stderr
    assert setup.remote_files() == []
    assert setup.run("run").returncode == 0


def test_the_speed_probe_waits_for_no_run(setup: Setup, broker_server: BrokerServer) -> None:
    setup.state_dir.mkdir()
    with open(setup.state_dir / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = setup.run("check", "--speed")
    assert done.returncode == 75, done.stderr
    assert "another run holds" in done.stderr and "MB/s" not in done.stdout


def test_status_keygen_and_decrypt_for_the_recipient(setup: Setup, broker_server: BrokerServer, tmp_path: Path) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Sachsenklinik"].submit(request_id, b"for the recipient")
    assert setup.run("run").returncode == 0
    table = setup.run("status")
    assert table.returncode == 0
    last_run, last_success, blank, header, row = table.stdout.splitlines()
    assert last_run.startswith("last run: ") and last_run.endswith("UTC, succeeded") and not blank
    assert last_success.startswith("last successful run: 20")
    assert header.split() == ["id", "completion", "uploaded", "last", "update", "deleted"]
    assert row.split()[:2] == [str(request_id), "1.0"]

    key_file = next(setup.config.parent.glob("fernet.key"))
    out = tmp_path / "result.zip"
    done = subprocess.run(
        [sys.executable, "-m", "aktin_sftp", "decrypt", "--key-file", str(key_file),
         str(setup.folder / f"export_{request_id}.zip"), str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert zip_entries(out.read_bytes()) == broker_server.export(request_id)
    assert out.stat().st_mode & 0o077 == 0

    new_key = tmp_path / "new.key"
    keygen = [sys.executable, "-m", "aktin_sftp", "keygen", str(new_key)]
    assert subprocess.run(keygen, capture_output=True, cwd=ROOT).returncode == 0
    assert new_key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(keygen, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "aktin_sftp", "decrypt", "--key-file", str(new_key),
         str(setup.folder / f"export_{request_id}.zip"), str(tmp_path / "wrong.zip")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert wrong.returncode == 1 and "wrong key" in wrong.stderr
    assert not (tmp_path / "wrong.zip").exists()


def upstream_status(entries: dict[int, str]) -> str:
    """A status.xml as the upstream uploader writes it: id, completion and upload time."""
    return "<status>" + "".join(
        f"<request-status><id>{i}</id><completion>{completion}</completion><uploaded>2024-05-02 10:00:00</uploaded>"
        "</request-status>"
        for i, completion in entries.items()
    ) + "</status>\n"


def test_import_takes_over_an_upstream_status_file_and_the_next_run_builds_on_it(
    setup: Setup, broker_server: BrokerServer, tmp_path: Path
) -> None:
    taken, new = broker_server.create_request([setup.tag]), broker_server.create_request([setup.tag])
    old = tmp_path / "upstream-working-dir" / "status.xml"
    old.parent.mkdir()
    old.write_text(upstream_status({taken: "0.0"}))
    done = setup.run("import", str(old))
    assert done.returncode == 0, done.stderr
    assert f"imported 1 requests from {old} into {setup.state_dir / 'status.xml'}" in done.stderr
    assert old.read_text() == upstream_status({taken: "0.0"})
    assert "2024-05-02 10:00:00" in setup.run("status").stdout

    done = setup.run("run", "--dry-run")
    assert f"would deliver request {new} (new)" in done.stdout
    assert f"would deliver request {taken} (changed)" in done.stdout
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == sorted([f"export_{taken}.zip", f"export_{new}.zip", "status.xml"])
    assert "2024-05-02 10:00:00" in setup.run("status").stdout

    done = setup.run("import", str(old))
    assert done.returncode == 1
    assert "already records 2 requests; refusing to replace it" in done.stderr


def test_import_refuses_a_damaged_or_missing_file_and_writes_nothing(setup: Setup, tmp_path: Path) -> None:
    damaged = tmp_path / "status.xml"
    damaged.write_text("<status><request-status><id>1</id>")
    done = setup.run("import", str(damaged))
    assert done.returncode == 1
    assert f"ERROR: {damaged}: status XML is unreadable" in done.stderr
    done = setup.run("import", str(tmp_path / "missing.xml"))
    assert done.returncode == 78
    assert "missing.xml: no such file" in done.stderr
    assert not setup.state_dir.exists()
