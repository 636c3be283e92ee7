"""Faults and hostile input on either side: one clear line, the right exit code, nothing deleted
that should stay, and the next run after the fault converges."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Setup
from tests.peers.broker import ADMIN_KEY, BrokerServer
from tests.peers.certificate import self_signed
from tests.peers.faults import BrokerProxy, Rule
from tests.peers.sshd import PASSWORD, UID, SshServer
from tests.peers.toxiproxy import Toxiproxy

NS = 'xmlns="http://aktin.org/ns/exchange"'
HOSTILE_ID = f'<request-list {NS}><request id="1 or 1=1"/></request-list>'.encode()
ENTITIES = f'<!DOCTYPE r [<!ENTITY a "aaaa">]><request-list {NS}><request id="1">&a;</request></request-list>'.encode()


@pytest.fixture
def proxy(broker_server: BrokerServer) -> Iterator[BrokerProxy]:
    server = BrokerProxy(broker_server.port)
    yield server
    server.stop()


@pytest.fixture
def delivered(setup: Setup, broker_server: BrokerServer) -> list[int]:
    """Two requests already delivered, so that a fault could wrongly remove them."""
    ids = [broker_server.create_request([setup.tag]) for _ in range(2)]
    for request_id in ids:
        broker_server.nodes["Schwarzwaldklinik"].submit(request_id, f"result {request_id}".encode())
    assert setup.run("run").returncode == 0
    return ids


def expected_files(ids: list[int]) -> list[str]:
    return sorted([f"export_{i}.zip" for i in ids] + ["status.xml"])


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.mark.parametrize(
    ("rule", "code", "message"),
    [
        (Rule("GET", r"/broker/request/filtered", status=500), 69, "answered the listing of tagged requests with HTTP 500"),
        (Rule("GET", r"/broker/request/filtered", status=200, body=b"<request-list"), 69, "malformed XML"),
        (Rule("GET", r"/broker/request/filtered", truncate=30), 69, "the listing of tagged requests failed"),
        (Rule("GET", r"/broker/request/\d+/status", status=200, body=b"<nope"), 69, "malformed XML"),
        (
            Rule("GET", r"/broker/request/filtered", delay=4), 69,
            "did not answer the listing of tagged requests within [broker] timeout = 2 s",
        ),
        (Rule("GET", r"/broker/request/filtered", status=401), 78, "refused the API key (HTTP 401)"),
        (
            Rule("GET", r"/broker/request/filtered", status=301, headers=(("Location", "http://elsewhere.example/"),)),
            78, "with a redirect (HTTP 301) to 'http://elsewhere.example/'; set [broker] url",
        ),
        (Rule("GET", r"/broker/request/filtered", status=200, body=HOSTILE_ID), 1, "request id '1 or 1=1' that is not a plain"),
        (Rule("GET", r"/broker/request/filtered", status=200, body=ENTITIES), 1, "DOCTYPE declaration; refused"),
    ],
    ids=["500", "malformed", "truncated", "status-malformed", "slow", "401", "redirect", "hostile-id", "entities"],
)
def test_broker_faults_change_nothing_and_the_next_run_converges(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy, delivered: list[int], rule: Rule, code: int, message: str
) -> None:
    proxied = setup.variant(broker_server.url, proxy.url).read_text().replace("timeout = 60", "timeout = 2")
    setup.config.write_text(proxied)
    newest = broker_server.create_request([setup.tag])
    proxy.rules.append(rule)
    failed = setup.run("run")
    assert failed.returncode == code, failed.stderr
    assert message in one_error_line(failed.stderr)
    assert setup.remote_files() == expected_files(delivered)

    proxy.rules.clear()
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert setup.remote_files() == expected_files([*delivered, newest])


def test_transient_errors_are_retried_but_an_export_is_never_sent_twice(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy
) -> None:
    setup.config.write_text(setup.variant(broker_server.url, proxy.url).read_text())
    request_id = broker_server.create_request([setup.tag])
    proxy.rules += [Rule("GET", r"/broker/request/filtered", status=503, times=2),
                    Rule("POST", r"/broker/export/", status=502, times=1)]
    failed = setup.run("run")
    assert failed.returncode == 1, failed.stderr
    assert f"broker answered the export of request {request_id} with HTTP 502" in one_error_line(failed.stderr)
    assert sum("filtered" in seen for seen in proxy.seen) == 3
    assert sum(seen.startswith("POST /broker/export/") for seen in proxy.seen) == 1
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert setup.remote_files() == expected_files([request_id])


def test_an_export_without_an_answer_is_not_sent_again_and_no_download_meets_it(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy
) -> None:
    proxied = setup.variant(broker_server.url, proxy.url).read_text().replace("timeout = 60", "timeout = 1")
    setup.config.write_text(proxied)
    ids = [broker_server.create_request([setup.tag]) for _ in range(3)]
    # The broker behind gets the export only after the client gave up on it: it is still exporting.
    proxy.rules.append(Rule("POST", r"/broker/export/", delay=2.5, times=1))
    failed = setup.run("run")
    assert failed.returncode == 69, failed.stderr
    assert "did not answer the export of request" in one_error_line(failed.stderr)
    exports = [seen for seen in proxy.seen if seen.startswith("POST /broker/export/")]
    assert len(exports) == 1, proxy.seen
    assert not [seen for seen in proxy.seen if seen.startswith("GET /broker/download/")], proxy.seen
    assert setup.remote_files() == []
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert setup.remote_files() == expected_files(ids)


@pytest.mark.parametrize("status", [502, 504])
def test_an_export_a_gateway_failed_is_not_met_by_another_export_or_download(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy, status: int
) -> None:
    """A proxy in front of the broker that answers 502 or 504 may have passed the export on: the
    broker may still be building that bundle."""
    setup.config.write_text(setup.variant(broker_server.url, proxy.url).read_text())
    ids = [broker_server.create_request([setup.tag]) for _ in range(3)]
    proxy.rules.append(Rule("POST", r"/broker/export/", status=status, times=1))
    failed = setup.run("run")
    assert failed.returncode == 1, failed.stderr
    assert f"with HTTP {status}" in failed.stderr
    assert "was not exported in this run: the broker may still be building the bundle" in failed.stderr
    assert len([seen for seen in proxy.seen if seen.startswith("POST /broker/export/")]) == 1, proxy.seen
    assert not [seen for seen in proxy.seen if seen.startswith("GET /broker/download/")], proxy.seen
    assert setup.remote_files() == ["status.xml"]
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert setup.remote_files() == expected_files(ids)


def test_one_failing_export_does_not_stop_the_others(setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy) -> None:
    setup.config.write_text(setup.variant(broker_server.url, proxy.url).read_text())
    ids = [broker_server.create_request([setup.tag]) for _ in range(3)]
    proxy.rules.append(Rule("POST", rf"/broker/export/request-bundle/{ids[1]}$", status=500))
    failed = setup.run("run")
    assert failed.returncode == 1
    assert f"broker answered the export of request {ids[1]} with HTTP 500" in failed.stderr
    assert setup.remote_files() == expected_files([ids[0], ids[2]])
    proxy.rules.clear()
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == expected_files(ids)


@pytest.mark.parametrize("status", [500, 404])
def test_one_failing_status_call_leaves_only_that_request_as_it_is(
    setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy, delivered: list[int], status: int
) -> None:
    setup.config.write_text(setup.variant(broker_server.url, proxy.url).read_text())
    stuck, changed = delivered
    before = (setup.folder / f"export_{stuck}.zip").read_bytes()
    for request_id in delivered:
        broker_server.nodes["Bergklinik"].submit(request_id, b"a second hospital")
    new = broker_server.create_request([setup.tag])
    proxy.rules.append(Rule("GET", rf"/broker/request/{stuck}/status$", status=status))
    failed = setup.run("run")
    assert failed.returncode == 1
    assert f"status of request {stuck} with HTTP {status}; request {stuck} is left as it is" in one_error_line(failed.stderr)
    assert f"re-delivered request {changed}" in failed.stderr
    assert f"delivered request {new} (new" in failed.stderr
    assert setup.remote_files() == expected_files([*delivered, new])
    assert (setup.folder / f"export_{stuck}.zip").read_bytes() == before
    proxy.rules.clear()
    again = setup.run("run")
    assert again.returncode == 0, again.stderr
    assert f"re-delivered request {stuck}" in again.stderr


@pytest.mark.parametrize("fault", ["truncated", "truncated without a length", "too-large"])
def test_broken_or_oversized_download(setup: Setup, broker_server: BrokerServer, proxy: BrokerProxy, fault: str) -> None:
    config = setup.variant(broker_server.url, proxy.url).read_text()
    if fault == "too-large":
        config = config.replace("timeout = 60", "timeout = 60\nmax_download_mib = 1")
    setup.config.write_text(config)
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(3 << 20), "application/octet-stream")
    if fault.startswith("truncated"):
        proxy.rules.append(Rule("GET", r"/broker/download/", truncate=100_000, length=fault == "truncated"))
    failed = setup.run("run")
    assert failed.returncode == 1
    expected = {
        "truncated": "broke off",
        "truncated without a length": f"the download of request {request_id} is not a whole zip",
        "too-large": "more than [broker] max_download_mib",
    }
    assert expected[fault] in one_error_line(failed.stderr)
    assert setup.remote_files() == ["status.xml"]
    assert sorted(p.name for p in setup.state_dir.iterdir()) == ["last-run.json", "lock", "status.xml"]
    if fault == "too-large":
        setup.config.write_text(config.replace("max_download_mib = 1", "max_download_mib = 8"))
    proxy.rules.clear()
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == expected_files([request_id])


def through(setup: Setup, ssh_server: SshServer, port: int) -> Path:
    """A config that reaches sshd through a proxy listening on `port`."""
    config = Path(shutil.copy(setup.config, setup.config.with_name("proxied.toml")))
    ssh_server.via_proxy(config, port)
    return config


def test_connection_cut_mid_upload(
    setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, toxiproxy: Toxiproxy
) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(4 << 20), "application/octet-stream")
    port = toxiproxy.proxy(setup.tag, ssh_server.port)
    toxiproxy.toxic(setup.tag, "limit_data", "upstream", bytes=1 << 20)
    try:
        failed = setup.run("run", config=through(setup, ssh_server, port))
    finally:
        toxiproxy.remove(setup.tag)
    assert failed.returncode == 69, failed.stderr
    assert "the SFTP connection was lost" in one_error_line(failed.stderr)
    assert [name for name in setup.remote_files() if not name.startswith(".")] == []
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == expected_files([request_id])


def in_sshd_namespace(ssh_server: SshServer, *command: str) -> None:
    subprocess.run(["nsenter", "-t", str(ssh_server.process.pid), "-m", "--", *command], check=True)


def test_remote_disk_full(setup: Setup, broker_server: BrokerServer, ssh_server: SshServer, delivered: list[int]) -> None:
    inside = f"/run/sftp/chroot{setup.remote_folder}"
    in_sshd_namespace(ssh_server, "mount", "-t", "tmpfs", "-o", f"size=1m,uid={UID},gid={UID},mode=755", "tmpfs", inside)
    try:
        request_id = broker_server.create_request([setup.tag])
        broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(3 << 20), "application/octet-stream")
        failed = setup.run("run")
    finally:
        in_sshd_namespace(ssh_server, "umount", inside)
    assert failed.returncode == 1
    error = one_error_line(failed.stderr)
    assert f"upload of {setup.remote_folder}/export_{request_id}.zip" in error and "full disk or quota" in error
    assert setup.remote_files() == expected_files(delivered)
    assert setup.run("run").returncode == 0
    assert setup.remote_files() == expected_files([*delivered, request_id])


def test_local_disk_full(setup: Setup, broker_server: BrokerServer) -> None:
    setup.state_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", str(setup.state_dir)], check=True)
    try:
        small = broker_server.create_request([setup.tag])
        assert setup.run("run").returncode == 0
        big = broker_server.create_request([setup.tag])
        broker_server.nodes["Bergklinik"].submit(big, os.urandom(3 << 20), "application/octet-stream")
        failed = setup.run("run")
        assert failed.returncode == 1
        assert "No space left on device" in one_error_line(failed.stderr)
        assert setup.remote_files() == expected_files([small])
        subprocess.run(["mount", "-o", "remount,size=64m", str(setup.state_dir)], check=True)
        assert setup.run("run").returncode == 0
        assert setup.remote_files() == expected_files([small, big])
    finally:
        subprocess.run(["umount", str(setup.state_dir)], check=True)


def test_damaged_status_xml_is_recovered_from_the_previous_copy_or_stops(
    setup: Setup, broker_server: BrokerServer, delivered: list[int]
) -> None:
    newest = broker_server.create_request([setup.tag])
    assert setup.run("run").returncode == 0
    status = setup.state_dir / "status.xml"
    status.write_bytes(status.read_bytes()[:40])
    done = setup.run("run")
    assert done.returncode == 0, done.stderr
    assert "using the previous good copy" in done.stderr
    assert setup.remote_files() == expected_files([*delivered, newest])

    status.write_bytes(b"")
    (setup.state_dir / "status.xml.prev").write_bytes(b"<status><request-status>")
    before = {name: (setup.folder / name).read_bytes() for name in setup.remote_files()}
    failed = setup.run("run")
    assert failed.returncode == 1
    assert "status XML is unreadable" in one_error_line(failed.stderr)
    assert {name: (setup.folder / name).read_bytes() for name in setup.remote_files()} == before


def test_no_secret_reaches_output_state_remote_or_environment(setup: Setup, broker_server: BrokerServer) -> None:
    request_id = broker_server.create_request([setup.tag])
    broker_server.nodes["Bergklinik"].submit(request_id, b"result")
    secrets = [ADMIN_KEY, setup.key.decode(), PASSWORD]
    process = subprocess.Popen(
        [*setup.command(), "-v", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    environ = Path(f"/proc/{process.pid}/environ").read_bytes()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    written = [stdout, stderr, environ]
    written += [p.read_bytes() for p in setup.state_dir.rglob("*") if p.is_file()]
    written += [(setup.folder / "status.xml").read_bytes()]
    for secret in secrets:
        assert all(secret.encode() not in blob for blob in written), secret
    assert (setup.state_dir.stat().st_mode & 0o077) == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in setup.state_dir.rglob("*"))



def test_tls_to_the_broker_is_verified_with_the_configured_ca(setup: Setup, broker_server: BrokerServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    proxy = BrokerProxy(broker_server.port, tls=(cert, key))
    try:
        request_id = broker_server.create_request([setup.tag])
        setup.config.write_text(setup.variant(broker_server.url, proxy.url).read_text())
        failed = setup.run("run")
        assert failed.returncode == 69
        assert "TLS to the broker" in one_error_line(failed.stderr) and "check [broker] ca_bundle" in failed.stderr
        assert setup.remote_files() == []
        setup.config.write_text(setup.config.read_text().replace("timeout = 60", f'timeout = 60\nca_bundle = "{cert}"'))
        done = setup.run("run")
        assert done.returncode == 0, done.stderr
        assert setup.remote_files() == expected_files([request_id])
    finally:
        proxy.stop()


def test_a_tls_handshake_trickling_in_ends_within_the_bound(
    setup: Setup, broker_server: BrokerServer, toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    """The TLS socket exists only after the handshake, so the watchdog has nothing to cut before:
    Python's ssl bounds the handshake as a whole by the socket's timeout, and urllib3 tries once more."""
    cert, key = self_signed(tmp_path)
    front = BrokerProxy(broker_server.port, tls=(cert, key))
    name = f"tls-{setup.tag}"[:60]
    port = toxiproxy.proxy(name, int(front.url.rsplit(":", 1)[1]))
    try:
        # One byte every 50 ms: the certificate alone would take a minute.
        toxiproxy.toxic(name, "slicer", "downstream", average_size=1, size_variation=0, delay=50_000)
        config = setup.variant(broker_server.url, f"https://127.0.0.1:{port}")
        config.write_text(config.read_text().replace("timeout = 60", f'timeout = 1\nca_bundle = "{cert}"'))
        started = time.monotonic()
        failed = setup.run("check", config=config)
        took = time.monotonic() - started
    finally:
        toxiproxy.remove(name)
        front.stop()
    assert failed.returncode == 69, failed.stderr
    assert "within [broker] timeout = 1 s" in one_error_line(failed.stderr)
    # The bound of every stall: three times the timeout, and the start and end of a Python process.
    assert took < 3 * 1 + 1.5, f"took {took:.1f} s: {failed.stderr}"


def test_two_runs_at_once_never_both_deliver(setup: Setup, broker_server: BrokerServer) -> None:
    ids = [broker_server.create_request([setup.tag]) for _ in range(4)]
    for request_id in ids:
        broker_server.nodes["Bergklinik"].submit(request_id, os.urandom(1 << 20), "application/octet-stream")
    runs = [subprocess.Popen([*setup.command(), "run"], stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[1] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes in ([0, 0], [0, 75]), outputs
    deliveries = [line for out in outputs for line in out.splitlines() if "delivered request" in line]
    assert len(deliveries) == len(ids), outputs
    assert setup.remote_files() == expected_files(ids)
