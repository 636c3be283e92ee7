"""The operator's life cycle of the Debian package in a booted Debian 12 and a booted Debian 13,
each with systemd as PID 1 and its own Python, paramiko and cryptography: apt install,
systemctl, journalctl, upgrade, purge. The tests run in file order, each phase on the system the
previous one left; tags and folders carry the release's name, as the broker and sshd serve both."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import events
from tests.conftest import ROOT
from tests.peers import package
from tests.peers.broker import ADMIN_KEY, BrokerServer
from tests.peers.client import write_key
from tests.peers.container import SUITES, Container
from tests.peers.sshd import PASSWORD, USER, SshServer

SERVICE = "aktin-broker-sftp.service"
# systemd's own journal messages: a unit starting, and a oneshot unit done with success.
UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
UNIT_FINISHED = "39f53479d3a045ac8e11786248231fbf"
TIMER = "aktin-broker-sftp.timer"
APT = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold"]


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not shutil.which("dpkg-buildpackage"):
        pytest.skip("dpkg-buildpackage is missing ('make test' installs it)")
    return package.build(tmp_path_factory.mktemp("deb")), package.build(tmp_path_factory.mktemp("deb-next"), "99.0.0")


@pytest.fixture(scope="module", params=SUITES)
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, debs: tuple[Path, Path]
) -> Iterator[Container]:
    if os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"):
        pytest.skip("needs root, systemd-nspawn and debootstrap ('make test' installs them)")
    container = Container(tmp_path_factory.mktemp(f"container-{request.param}"), request.param)
    # An operator's drop-in (as the man page describes) that keeps the timer from firing in the
    # middle of a test; the timer is still enabled and started by the package.
    drop_in = container.path("/etc/systemd/system/aktin-broker-sftp.timer.d")
    drop_in.mkdir(parents=True)
    (drop_in / "schedule.conf").write_text("[Timer]\nOnCalendar=\nOnCalendar=2099-01-01\n")
    packages = container.path("/srv/packages")
    packages.mkdir()
    for deb in debs:
        shutil.copy(deb, packages)
    yield container
    container.stop()


def unit(system: Container, name: str, *properties: str) -> dict[str, str]:
    shown = system.run("systemctl", "show", name, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in shown.splitlines())


def journal(system: Container) -> list[dict[str, str]]:
    lines = system.run("journalctl", "-u", "aktin-broker-sftp", "-o", "json", "--no-pager").stdout.splitlines()
    return [entry for entry in map(json.loads, lines) if entry.get("SYSLOG_IDENTIFIER") == "aktin-broker-sftp"]


def configure(example: str, settings: dict[str, str]) -> str:
    """Uncomments and sets keys in the shipped example, as an operator would."""
    lines = example.splitlines()
    for key, value in settings.items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"#{key} = "))
        lines[index] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def test_lintian_has_no_errors_or_warnings(debs: tuple[Path, Path]) -> None:
    if not shutil.which("lintian"):
        pytest.skip("lintian is missing ('make test' installs it)")
    done = subprocess.run(["lintian", "--allow-root", "--fail-on", "error,warning", str(debs[0])], capture_output=True, text=True)
    assert done.returncode == 0 and not [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")], done.stdout


def test_install_enables_only_the_timer(system: Container, debs: tuple[Path, Path]) -> None:
    system.run(*APT, f"/srv/packages/{debs[0].name}")
    depends = system.run("dpkg-query", "-W", "-f", "${Depends}", "aktin-broker-sftp").stdout
    needed = {"python3-paramiko", "python3-cryptography", "python3-defusedxml", "python3-requests", "python3-urllib3"}
    assert needed <= {d.split()[0] for d in depends.split(", ")}
    assert system.run("systemctl", "is-enabled", TIMER).stdout.strip() == "enabled"
    assert system.run("systemctl", "is-active", TIMER).stdout.strip() == "active"
    # The recipient's side is for a recipient to turn on.
    receiving = system.run("systemctl", "is-enabled", "aktin-broker-sftp-receive.timer", check=False).stdout.strip()
    assert receiving == "disabled"
    # So is the event listener, for an operator to turn on.
    listening = system.run("systemctl", "is-enabled", "aktin-broker-sftp-watch.service", check=False).stdout.strip()
    assert listening == "disabled"
    timers = system.run("systemctl", "list-timers", "--all").stdout
    assert TIMER in timers and "2099-01-01" in timers
    assert unit(system, SERVICE, "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"] == "0"
    assert system.run("systemctl", "is-enabled", SERVICE, check=False).stdout.strip() == "static"
    assert "aktin-sftp" in system.run("id", "aktin-sftp").stdout
    assert system.run("stat", "-c", "%U:%G %a", "/etc/aktin/sftp.toml").stdout.split() == ["root:aktin-sftp", "640"]
    assert system.run("stat", "-c", "%U:%G %a", "/var/lib/aktin/sftp").stdout.split() == ["aktin-sftp:aktin-sftp", "700"]
    verify = system.run("systemd-analyze", "verify", SERVICE, TIMER, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = system.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(security.rsplit("Overall exposure level for aktin-broker-sftp.service:", 1)[1].split()[0])
    assert exposure <= 2.0, security
    manual = " ".join(system.run("man", "-P", "cat", "aktin-broker-sftp").stdout.split())
    assert "aktin-broker-sftp - deliver tagged AKTIN Broker results" in manual


def test_unconfigured_run_fails_with_78_and_one_clear_journal_line(system: Container) -> None:
    assert system.run("systemctl", "start", SERVICE, check=False).returncode != 0
    assert unit(system, SERVICE, "Result", "ExecMainStatus") == {"Result": "exit-code", "ExecMainStatus": "78"}
    entries = journal(system)
    assert [e["MESSAGE"] for e in entries] == ["/etc/aktin/sftp.toml: [broker] url: missing"]
    assert entries[0]["MESSAGE_ID"] == events.RUN_FAILED and entries[0]["PRIORITY"] == "3"
    explained = system.run("journalctl", "-x", "-u", "aktin-broker-sftp", "--no-pager").stdout
    assert "Subject: A delivery run failed" in explained and "78 a configuration error" in " ".join(explained.split())


def test_the_unit_tests_pass_on_the_system_python_without_tomllib(system: Container) -> None:
    """Python 3.10 (Ubuntu 22.04) has no tomllib; the installed package then uses python3-tomli."""
    for part in ("tests", "systemd", "debian"):
        shutil.copytree(ROOT / part, system.path(f"/srv/suite/{part}"), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", system.path("/srv/suite/README.md"))
    done = system.run(
        "sh", "-c", "cd /srv/suite && AKTIN_SFTP_HIDE_TOMLLIB=1 python3 -m pytest -q -p no:cacheprovider tests/unit", check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    located = system.run("python3", "-c", "import aktin_sftp; print(aktin_sftp.__file__)").stdout
    assert located.startswith("/usr/lib/python3/dist-packages/")


def test_a_delivery_under_systemd(system: Container, broker_server: BrokerServer, ssh_server: SshServer) -> None:
    tag = f"systemd-delivery-{system.suite}"
    ids = [broker_server.create_request([tag]) for _ in range(2)]
    for request_id in ids:
        broker_server.nodes["Sachsenklinik"].submit(request_id, f"result {request_id}".encode())
    folder = ssh_server.folder(tag)
    etc = system.path("/etc/aktin")
    key = write_key(etc / "sftp-fernet.key")
    (etc / "sftp-broker-api-key").write_text(ADMIN_KEY + "\n")
    (etc / "sftp-password").write_text(PASSWORD + "\n")
    shutil.copy(ssh_server.known_hosts, etc / "sftp-known_hosts")
    settings = {
        "url": f'"{broker_server.url}"', "api_key_file": '"/etc/aktin/sftp-broker-api-key"', "tag": f'"{tag}"',
        "host": '"127.0.0.1"', "port": str(ssh_server.port), "username": f'"{USER}"',
        "password_file": '"/etc/aktin/sftp-password"', "known_hosts": '"/etc/aktin/sftp-known_hosts"',
        "folder": f'"{SshServer.remote(folder)}"', "key_file": '"/etc/aktin/sftp-fernet.key"',
    }
    config = configure((etc / "sftp.toml").read_text(), settings)
    (etc / "sftp.toml").write_text(config)
    for name in ("sftp-fernet.key", "sftp-broker-api-key", "sftp-password"):
        system.run("chown", "root:aktin-sftp", f"/etc/aktin/{name}")
        system.run("chmod", "0640", f"/etc/aktin/{name}")

    started = system.run("systemctl", "start", SERVICE, check=False)
    assert started.returncode == 0, [e["MESSAGE"] for e in journal(system)]
    assert unit(system, SERVICE, "Result")["Result"] == "success"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"export_{i}.zip" for i in ids] + ["status.xml"])
    for request_id in ids:
        assert Fernet(key).decrypt((folder / f"export_{request_id}.zip").read_bytes())[:2] == b"PK"
    status = system.run("cat", "/var/lib/aktin/sftp/status.xml").stdout
    assert all(f"<id>{i}</id>" in status for i in ids)
    assert system.run("stat", "-c", "%U %a", "/var/lib/aktin/sftp").stdout.split() == ["aktin-sftp", "700"]
    shown = system.run("systemctl", "status", "--no-pager", SERVICE, check=False).stdout
    assert "status=0/SUCCESS" in shown and "run finished: 2 delivered" in shown
    # Monitoring asks as root (sudo in NRPE) or as the service user; both read the same record.
    for health in (("aktin-broker-sftp", "health"), ("runuser", "-u", "aktin-sftp", "--", "aktin-broker-sftp", "health")):
        checked = system.run(*health, check=False)
        assert checked.returncode == 0 and checked.stdout.startswith("OK - "), checked.stdout + checked.stderr
        assert "delivered=2 " in checked.stdout

    entries = journal(system)
    delivered = [e for e in entries if e.get("MESSAGE_ID") == events.DELIVERED]
    assert sorted(int(e["REQUEST_ID"]) for e in delivered) == ids
    assert all(e["REMOTE_PATH"].endswith(f"export_{e['REQUEST_ID']}.zip") and int(e["BYTES"]) > 0 for e in delivered)
    assert any(e.get("MESSAGE_ID") == events.RUN_FINISHED for e in entries)
    explained = system.run("journalctl", "-x", "-u", "aktin-broker-sftp", "--no-pager").stdout
    assert f"The results of request {ids[0]} were exported from the AKTIN Broker" in " ".join(explained.split())
    text = json.dumps(entries)
    assert ADMIN_KEY not in text and PASSWORD not in text and key.decode() not in text


def test_the_recipients_receive_unit_takes_in_what_was_delivered(system: Container, ssh_server: SshServer) -> None:
    """The recipient's side under its own hardened unit, started by hand as the README says
    (the package enables neither it nor its timer), from the folder the delivery above filled."""
    folder = ssh_server.upload / f"systemd-delivery-{system.suite}"
    delivered = sorted(p.name for p in folder.iterdir() if p.name != "status.xml")
    etc = system.path("/etc/aktin")
    (etc / "receive.toml").write_text(
        f'[sftp]\nhost = "127.0.0.1"\nport = {ssh_server.port}\nusername = "{USER}"\n'
        'password_file = "/etc/aktin/sftp-password"\nknown_hosts = "/etc/aktin/sftp-known_hosts"\n'
        f'folder = "{SshServer.remote(folder)}"\n\n[keys]\nfiles = ["/etc/aktin/sftp-fernet.key"]\n'
    )
    system.run("chown", "root:aktin-sftp", "/etc/aktin/receive.toml")
    system.run("chmod", "0640", "/etc/aktin/receive.toml")
    receiver = "aktin-broker-sftp-receive.service"

    started = system.run("systemctl", "start", receiver, check=False)
    lines = system.run("journalctl", "-u", receiver, "-o", "cat", "--no-pager").stdout
    assert started.returncode == 0, lines
    assert unit(system, receiver, "Result")["Result"] == "success"
    inbox = system.path("/var/lib/aktin/receive/inbox")
    assert sorted(p.name for p in inbox.iterdir()) == delivered
    key = Fernet((etc / "sftp-fernet.key").read_bytes().strip())
    for name in delivered:
        assert (inbox / name).read_bytes() == key.decrypt((folder / name).read_bytes())
    assert system.run("stat", "-c", "%U %a", "/var/lib/aktin/receive/inbox").stdout.split() == ["aktin-sftp", "700"]
    assert {system.run("stat", "-c", "%a", f"/var/lib/aktin/receive/inbox/{n}").stdout.strip() for n in delivered} == {"600"}
    assert f"receive: {len(delivered)} received, 0 withdrawn, 0 refused, 0 unchanged" in lines

    # Again: nothing new, nothing fetched; --status as the service user lists what came in.
    assert system.run("systemctl", "start", receiver, check=False).returncode == 0
    again = system.run("journalctl", "-u", receiver, "-o", "cat", "--no-pager").stdout
    assert f"receive: 0 received, 0 withdrawn, 0 refused, {len(delivered)} unchanged" in again
    listed = system.run("runuser", "-u", "aktin-sftp", "--", "aktin-broker-sftp", "receive", "--status").stdout
    assert sorted(re.findall(r"(export_\d+\.zip) received", listed)) == delivered
    assert system.run("systemctl", "is-enabled", "aktin-broker-sftp-receive.timer", check=False).stdout.strip() == "disabled"


def test_the_listener_starts_a_delivery_seconds_after_a_result_without_the_timer(
    system: Container, broker_server: BrokerServer, ssh_server: SshServer, debs: tuple[Path, Path]
) -> None:
    """Turned on as the README says; the timer stays as it is (set to 2099 by this suite)."""
    watcher, path_unit = "aktin-broker-sftp-watch.service", "aktin-broker-sftp.path"
    tag = f"systemd-delivery-{system.suite}"
    folder = ssh_server.upload / tag
    config = system.path("/etc/aktin/sftp.toml")
    config.write_text(configure(config.read_text(), {"quiet_seconds": "2"}))
    verify = system.run("systemd-analyze", "verify", watcher, path_unit, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    assert system.run("systemctl", "is-enabled", watcher, check=False).stdout.strip() == "disabled"
    enabled = system.run("systemctl", "enable", "--now", watcher, check=False)
    assert enabled.returncode == 0, system.run("journalctl", "-u", watcher, "--no-pager").stdout
    assert system.run("systemctl", "is-active", path_unit).stdout.strip() == "active"

    def runs() -> int:
        shown = system.run("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout
        return shown.count("run finished:")

    # The run that catches up on connecting, then a hospital's result.
    deadline = time.monotonic() + 90
    before = runs()
    while runs() == before:
        assert time.monotonic() < deadline, system.run("journalctl", "-u", watcher, "--no-pager").stdout
        time.sleep(0.5)
    request_id = broker_server.create_request([tag])
    broker_server.nodes["Sachsenklinik"].submit(request_id, b"seconds after it came")
    submitted = time.monotonic()
    while not (folder / f"export_{request_id}.zip").exists():
        assert time.monotonic() - submitted < 60, system.run("journalctl", "-u", watcher, "--no-pager").stdout
        time.sleep(0.2)
    assert time.monotonic() - submitted < 30
    listened = system.run("journalctl", "-u", watcher, "-o", "json", "--no-pager").stdout.splitlines()
    requested = [e for e in map(json.loads, listened) if e.get("MESSAGE_ID") == events.RUN_REQUESTED]
    assert requested and all(e["SYSLOG_IDENTIFIER"] == "aktin-broker-sftp-watch" for e in requested)
    assert unit(system, watcher, "StatusText")["StatusText"].startswith("listening to ws://")

    # A listener that hangs is killed and started again by systemd's watchdog.
    drop_in = system.path(f"/etc/systemd/system/{watcher}.d")
    drop_in.mkdir(parents=True)
    (drop_in / "watchdog.conf").write_text("[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\nRestartSec=1s\n")
    system.run("systemctl", "daemon-reload")
    system.run("systemctl", "restart", watcher)
    system.run("systemctl", "kill", "--signal=SIGSTOP", watcher)
    deadline = time.monotonic() + 30
    while unit(system, watcher, "NRestarts")["NRestarts"] == "0":
        assert time.monotonic() < deadline, "the watchdog did not restart a hung listener"
        time.sleep(0.5)
    shutil.rmtree(drop_in)
    system.run("systemctl", "daemon-reload")

    # An upgrade (here the same package again) restarts an enabled listener; apt remove stops it.
    def active(name: str) -> str:
        return system.run("systemctl", "is-active", name, check=False).stdout.strip()

    pid = unit(system, watcher, "MainPID")["MainPID"]
    system.run(*APT, "--reinstall", f"/srv/packages/{debs[0].name}")
    assert (active(watcher), active(path_unit)) == ("active", "active")
    assert unit(system, watcher, "MainPID")["MainPID"] != pid
    system.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "-q", "aktin-broker-sftp")
    assert (active(watcher), active(path_unit)) == ("inactive", "inactive")
    system.run(*APT, f"/srv/packages/{debs[0].name}")
    assert active(watcher) == "active", "installed again, the listener is enabled as before"

    stopped = time.monotonic()
    system.run("systemctl", "disable", "--now", watcher)
    assert time.monotonic() - stopped < 15
    assert unit(system, watcher, "ActiveState")["ActiveState"] == "inactive"
    assert system.run("systemctl", "is-active", path_unit, check=False).stdout.strip() == "inactive"
    assert "Traceback" not in system.run("journalctl", "-u", watcher, "--no-pager").stdout


def test_an_upstream_working_dir_is_a_clear_78_and_import_takes_its_state_over(
    system: Container, broker_server: BrokerServer, ssh_server: SshServer
) -> None:
    """An operator keeps the upstream uploader's config, whose WORKING_DIR the hardened unit
    cannot write; the journal says what to do, and the documented commands do it."""
    tag = f"systemd-import-{system.suite}"
    taken, new = broker_server.create_request([tag]), broker_server.create_request([tag])
    broker_server.nodes["Sachsenklinik"].submit(taken, b"result")
    gone = new + 1000
    folder = ssh_server.folder(tag)
    system.run("find", "/var/lib/aktin/sftp", "-mindepth", "1", "-delete")
    upstream = system.path("/opt/aktin-upstream")
    upstream.mkdir()
    old_status = (
        f"<status><request-status><id>{taken}</id><completion>1.0</completion><uploaded>2024-05-02 10:00:00</uploaded>"
        f"</request-status><request-status><id>{gone}</id><completion>1.0</completion><uploaded>2024-05-02 10:00:00"
        "</uploaded><deleted>2024-05-03 10:00:00</deleted></request-status></status>\n"
    )
    (upstream / "status.xml").write_text(old_status)
    config = system.path("/etc/aktin/sftp.toml")
    ours = config.read_text()
    upstream_config = f"""
[BROKER]
URL = "{broker_server.url}"
API_KEY = "{ADMIN_KEY}"
[REQUESTS]
TAG = "{tag}"
[SFTP]
HOST = "127.0.0.1"
PORT = "{ssh_server.port}"
USERNAME = "{USER}"
PASSWORD = "{PASSWORD}"
FOLDERNAME = "{SshServer.remote(folder)}"
KNOWN_HOSTS = "/etc/aktin/sftp-known_hosts"
[SECURITY]
PATH_ENCRYPTION_KEY = "/etc/aktin/sftp-fernet.key"
[MISC]
WORKING_DIR = "/opt/aktin-upstream"
"""
    config.write_text(upstream_config)
    try:
        assert system.run("systemctl", "start", SERVICE, check=False).returncode != 0
        assert unit(system, SERVICE, "ExecMainStatus") == {"ExecMainStatus": "78"}
        failed = [e["MESSAGE"] for e in journal(system) if e.get("MESSAGE_ID") == events.RUN_FAILED][-1]
        assert failed.startswith(
            "state directory /opt/aktin-upstream is read-only here; the systemd unit lets the service write only "
            "/var/lib/aktin/sftp: set [state] directory (MISC.WORKING_DIR in an upstream config) to it"
        ), failed
        assert folder.exists() and list(folder.iterdir()) == []

        config.write_text(upstream_config.replace("/opt/aktin-upstream", "/var/lib/aktin/sftp"))
        imported = system.run(
            "runuser", "-u", "aktin-sftp", "--", "aktin-broker-sftp", "import", "/opt/aktin-upstream/status.xml", check=False
        )
        assert imported.returncode == 0, imported.stderr
        assert "imported 2 requests" in imported.stderr
        started = system.run("systemctl", "start", SERVICE, check=False)
        assert started.returncode == 0, [e["MESSAGE"] for e in journal(system)][-5:]
        assert sorted(p.name for p in folder.iterdir()) == sorted([f"export_{taken}.zip", f"export_{new}.zip", "status.xml"])
        status = system.run("runuser", "-u", "aktin-sftp", "--", "aktin-broker-sftp", "status").stdout
        assert re.search(rf"^{taken} .* 2024-05-02 10:00:00 ", status, re.MULTILINE), status
        assert re.search(rf"^{gone} .* 2024-05-03 10:00:00$", status, re.MULTILINE), status
        assert (upstream / "status.xml").read_text() == old_status
        assert system.run("stat", "-c", "%U", "/var/lib/aktin/sftp/status.xml").stdout.strip() == "aktin-sftp"
    finally:
        config.write_text(ours)


def test_two_recipients_as_unit_instances_at_the_same_time(
    system: Container, broker_server: BrokerServer, ssh_server: SshServer
) -> None:
    etc = system.path("/etc/aktin")
    example = (ROOT / "debian" / "sftp.toml").read_text()
    ids, folders = {}, {}
    for name in ("rki", "zi"):
        tag = f"systemd-instance-{name}-{system.suite}"
        ids[name] = [broker_server.create_request([tag]) for _ in range(2)]
        for request_id in ids[name]:
            broker_server.nodes["Sachsenklinik"].submit(request_id, f"{name} {request_id}".encode())
        folders[name] = ssh_server.folder(tag)
        settings = {
            "url": f'"{broker_server.url}"', "api_key_file": '"/etc/aktin/sftp-broker-api-key"', "tag": f'"{tag}"',
            "host": '"127.0.0.1"', "port": str(ssh_server.port), "username": f'"{USER}"',
            "password_file": '"/etc/aktin/sftp-password"', "known_hosts": '"/etc/aktin/sftp-known_hosts"',
            "folder": f'"{SshServer.remote(folders[name])}"', "key_file": '"/etc/aktin/sftp-fernet.key"',
        }
        # No [state] directory: the instance's config name decides it.
        (etc / f"sftp-{name}.toml").write_text(configure(example, settings))
        system.run("chown", "root:aktin-sftp", f"/etc/aktin/sftp-{name}.toml")
        system.run("chmod", "0640", f"/etc/aktin/sftp-{name}.toml")
    plain_state = system.run("cat", "/var/lib/aktin/sftp/status.xml", check=False).stdout

    units = [f"aktin-broker-sftp@{name}.service" for name in ids]
    started = system.run("systemctl", "start", *units, check=False)
    assert started.returncode == 0, system.run("journalctl", "-u", "aktin-broker-sftp@*", "--no-pager").stdout[-3000:]
    # An instance is unloaded once it is done, so systemd's own journal lines show when each
    # one started and finished.
    runs = []
    for name in units:
        lines = system.run("journalctl", "-u", name, "-o", "json", "--no-pager").stdout.splitlines()
        by_id = {e.get("MESSAGE_ID"): int(e["__MONOTONIC_TIMESTAMP"]) for e in map(json.loads, reversed(lines))}
        runs.append((by_id[UNIT_STARTING], by_id[UNIT_FINISHED]))
    first, second = runs
    assert first[0] < second[1] and second[0] < first[1], f"the two instances did not run at the same time: {runs}"
    for name, own in ids.items():
        assert sorted(p.name for p in folders[name].iterdir()) == sorted([f"export_{i}.zip" for i in own] + ["status.xml"])
        state = f"/var/lib/aktin/sftp-{name}"
        assert system.run("stat", "-c", "%U %a", state).stdout.split() == ["aktin-sftp", "700"]
        status = system.run("cat", f"{state}/status.xml").stdout
        assert all(f"<id>{i}</id>" in status for i in own)
        assert not any(f"<id>{i}</id>" in status for other in ids.values() if other is not own for i in other)
        lines = system.run("journalctl", "-u", f"aktin-broker-sftp@{name}", "-o", "json", "--no-pager").stdout.splitlines()
        delivered = [e for e in map(json.loads, lines) if e.get("MESSAGE_ID") == events.DELIVERED]
        assert sorted(int(e["REQUEST_ID"]) for e in delivered) == own
        assert {e["SYSLOG_IDENTIFIER"] for e in delivered} == {f"aktin-broker-sftp-{name}"}
    assert system.run("cat", "/var/lib/aktin/sftp/status.xml", check=False).stdout == plain_state

    # "File 17 is missing": the documented commands for an operator on a packaged install.
    again = ids["rki"][1]
    queued = system.run(
        "runuser", "-u", "aktin-sftp", "--", "aktin-broker-sftp", "--config", "/etc/aktin/sftp-rki.toml",
        "redeliver", str(again), check=False,
    )
    assert queued.returncode == 0, queued.stderr
    system.run("systemctl", "start", units[0])
    lines = system.run("journalctl", "-u", "aktin-broker-sftp@rki", "-o", "json", "--no-pager").stdout.splitlines()
    redelivered = [e for e in map(json.loads, lines) if e.get("MESSAGE_ID") == events.REDELIVERED]
    assert [int(e["REQUEST_ID"]) for e in redelivered] == [again]
    assert "re-delivery requested" in redelivered[0]["MESSAGE"]

    system.run("systemctl", "enable", "--now", "aktin-broker-sftp@zi.timer")
    assert "aktin-broker-sftp@zi.timer" in system.run("systemctl", "list-timers", "--all").stdout
    system.run("systemctl", "disable", "--now", "aktin-broker-sftp@zi.timer")
    assert system.run("systemctl", "is-enabled", TIMER).stdout.strip() == "enabled"


def test_upgrade_keeps_the_edited_conffile_and_the_state(system: Container, debs: tuple[Path, Path]) -> None:
    state = system.path("/var/lib/aktin/sftp")
    if not (state / "status.xml").exists():
        system.run("install", "-d", "-o", "aktin-sftp", "-m", "700", "/var/lib/aktin/sftp")
        (state / "status.xml").write_text("<status />\n")
    conffile = system.path("/etc/aktin/sftp.toml")
    conffile.write_text(conffile.read_text() + "# edited by the operator\n")
    edited, status = conffile.read_text(), (state / "status.xml").read_bytes()
    before = unit(system, SERVICE, "ExecMainStartTimestampMonotonic")

    system.run(*APT, f"/srv/packages/{debs[1].name}")
    assert "99.0.0" in system.run("dpkg-query", "-W", "aktin-broker-sftp").stdout
    assert conffile.read_text() == edited
    assert (state / "status.xml").read_bytes() == status
    assert system.run("systemctl", "is-enabled", TIMER).stdout.strip() == "enabled"
    assert unit(system, SERVICE, "ExecMainStartTimestampMonotonic") == before


def test_remove_keeps_state_and_purge_removes_it_but_keeps_the_user(system: Container) -> None:
    state = system.path("/var/lib/aktin/sftp/status.xml")
    system.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "-q", "aktin-broker-sftp")
    assert state.exists()
    system.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-q", "aktin-broker-sftp")
    assert not system.path("/var/lib/aktin/sftp").exists()
    # The recipient's inbox is the received data itself: no package operation removes it.
    assert system.path("/var/lib/aktin/receive/inbox").is_dir() and any(system.path("/var/lib/aktin/receive/inbox").iterdir())
    assert not system.path("/etc/aktin/sftp.toml").exists()
    assert "aktin-sftp" in system.run("id", "aktin-sftp").stdout
