"""`make bench`: the performance goals, measured side by side with a reference in one run.

Starts its own AKTIN Broker and sshd (as the tests do), builds the inputs and prints one table.
`--full` uses the full sizes (bundles of 64 MiB, 256 MiB and 1 GiB; a 1 GiB upload).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from aktin_sftp import config as config_module
from aktin_sftp import crypto
from aktin_sftp.broker import Broker
from aktin_sftp.config import BrokerConfig
from aktin_sftp.plan import Observed, make_plan
from aktin_sftp.sftp import Remote
from aktin_sftp.state import Entry, StatusFile
from tests.peers import broker as broker_peer
from tests.peers.client import write_config, write_key
from tests.peers.sshd import USER, SshServer
from tests.peers.tls import TlsFront

MiB = 1 << 20
WARM_UP_ROUNDS = 10
Row = tuple[str, str, str, str, str]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="full sizes: 64 MiB to 1 GiB bundles, 1 GiB upload")
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    bundle_sizes = [64, 256, 1024] if args.full else [16, 64]
    upload_size = 1024 if args.full else 256
    with tempfile.TemporaryDirectory(prefix="aktin-sftp-bench-") as temporary:
        work = Path(temporary)
        broker = broker_peer.start(work / "broker", own_process=True)
        print(f"broker: {broker.kind}", flush=True)
        sshd = SshServer(work / "sshd")
        bench = Bench(work, broker, sshd)
        try:
            rows = bench.memory(bundle_sizes) + bench.upload(upload_size) + bench.many(args.requests) + bench.state()
        finally:
            sshd.stop()
            broker.stop()
    print_table(rows)
    return 0


class Bench:
    def __init__(self, work: Path, broker: broker_peer.BrokerServer, sshd: SshServer) -> None:
        self.work = work
        self.broker = broker
        self.sshd = sshd
        self.hospital = broker.nodes["Schwarzwaldklinik"]

    def client(self, name: str, tag: str) -> Path:
        directory = self.work / name
        directory.mkdir()
        key_file = directory / "fernet.key"
        write_key(key_file)
        folder = self.sshd.folder(name)
        return write_config(directory / "sftp.toml", self.broker.url, self.sshd, folder, tag, key_file, directory / "state")

    def memory(self, sizes: list[int]) -> list[Row]:
        rows = []
        for size in sizes:
            tag = f"bench-memory-{size}"
            request_id = self.broker.create_request([tag])
            source = self.work / "result.bin"
            write_random(source, size * MiB)
            with open(source, "rb") as handle:
                self.hospital.submit(request_id, handle, "application/octet-stream")
            source.unlink()
            ours = self.client(f"memory-ours-{size}", tag)
            ours_rss, ours_seconds = measure([sys.executable, "-m", "aktin_sftp", "--config", str(ours), "run"])
            reference = self.client(f"memory-reference-{size}", tag)
            config_module.load(reference).state_dir.mkdir()
            reference_rss, reference_seconds = measure(
                [sys.executable, "-m", "tests.bench_reference", "delivery", str(reference), str(request_id)]
            )
            rows.append((
                f"1. peak RSS of a run delivering a {size} MiB bundle [{self.broker.short}]",
                f"{ours_rss:.0f} MiB ({ours_seconds:.1f} s)",
                f"{reference_rss:.0f} MiB ({reference_seconds:.1f} s)",
                f"{ours_rss / reference_rss:.2f}",
                "< 100 MiB, flat",
            ))
        return rows

    def upload(self, size: int) -> list[Row]:
        plain, token = self.work / "plain.bin", self.work / "token.bin"
        write_random(plain, size * MiB)
        write_key(self.work / "upload.key")
        with open(plain, "rb") as source, open(token, "wb") as target:
            crypto.encrypt_stream(crypto.load_key(self.work / "upload.key"), source, target)
        plain.unlink()
        config = config_module.load(self.client("upload", "bench-upload"))
        folder = config.sftp.folder
        token_size = token.stat().st_size

        def ours() -> None:
            with Remote(config.sftp) as remote:
                remote.upload(token, "export_1.zip")

        def openssh() -> None:
            self.sshd.client_key.chmod(0o600)
            subprocess.run(
                ["sftp", "-q", "-b", "-", "-i", str(self.sshd.client_key), "-P", str(self.sshd.port),
                 "-o", f"UserKnownHostsFile={self.sshd.known_hosts}", f"{USER}@127.0.0.1"],
                input=f"put {token} {folder}/openssh.bin\n".encode(), check=True, capture_output=True,
            )

        ours_seconds, openssh_seconds = best_in_turns(3, ours, openssh)
        ours_rate, openssh_rate = token_size / ours_seconds, token_size / openssh_seconds
        token.unlink()
        return [(
            f"2. upload of a {token_size / MiB:.0f} MiB token (connect included)",
            f"{ours_rate / 1e6:.0f} MB/s",
            f"{openssh_rate / 1e6:.0f} MB/s (OpenSSH sftp)",
            f"{ours_rate / openssh_rate:.2f}",
            ">= 0.80",
        )]

    def many(self, count: int) -> list[Row]:
        tag = "bench-many"
        for number in range(count):
            request_id = self.broker.create_request([tag], title=f"bench {number}")
            self.hospital.submit(request_id, f"result {number}".encode())
        config = self.client("many", tag)
        started = time.perf_counter()
        first = subprocess.run(run_command(config), capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        # A broker in service has long JIT-compiled its status path; a fresh one needs a few
        # thousand calls for that. Neither side is timed until then.
        settings = config_module.load(config).broker
        with Broker(settings) as broker:
            ids = broker.tagged_request_ids(tag)
        for _ in range(WARM_UP_ROUNDS):
            bare_status_calls(settings, ids)
        plain, reference = self.unchanged_runs(config, len(ids), f"plain HTTP, first run {time.perf_counter() - started:.0f} s")
        rows = [plain, self.floor(config, ids, reference)]
        # On a broker server, Apache or nginx terminates TLS in front of the broker; there a new
        # connection per call costs a TLS handshake each.
        front = TlsFront(self.work / "tls", self.broker.port)
        try:
            text = config.read_text().replace(self.broker.url, front.url)
            config.write_text(text.replace("timeout = 60", f'timeout = 60\nca_bundle = "{front.certificate}"'))
            tls, reference = self.unchanged_runs(config, len(ids), "HTTPS through nginx")
            rows += [tls, self.floor(config, ids, reference)]
        finally:
            front.stop()
        return rows

    def unchanged_runs(self, config: Path, count: int, how: str) -> tuple[Row, float]:
        reference_command = [sys.executable, "-m", "tests.bench_reference", "unchanged", str(config)]
        ours, reference = best_in_turns(
            3,
            lambda: subprocess.run(run_command(config), check=True, capture_output=True),
            lambda: subprocess.run(reference_command, check=True, capture_output=True),
        )
        row = (
            f"3. run over {count} tagged requests, nothing changed ({how}) [{self.broker.short}]",
            f"{ours:.2f} s",
            f"{reference:.2f} s (new connection per call, sequential)",
            f"{reference / ours:.1f}x faster",
            ">= 5x faster",
        )
        return row, reference

    def floor(self, config: Path, ids: list[int], reference: float) -> Row:
        """A lower bound for any Python client with our libraries on this machine: starting
        Python and importing them, plus the broker answering the listing and the status calls
        over bare keep-alive connections, `parallel` at a time (no SFTP at all). Its ratio is the
        best one possible."""
        settings = config_module.load(config).broker
        with Broker(settings) as broker:
            imports = best_of(3, lambda: subprocess.run([sys.executable, "-c", "import aktin_sftp.cli"], check=True))
            listing = best_of(3, lambda: broker.tagged_request_ids(settings.tag))
        calls = best_of(3, lambda: bare_status_calls(settings, ids))
        total = imports + listing + calls
        return (
            f"3. [{self.broker.short}] floor over {'HTTPS' if settings.url.startswith('https') else 'HTTP'}: "
            "Python start and imports + "
            f"listing + {len(ids)} bare status calls, {settings.parallel} at a time",
            f"{imports:.2f} + {listing:.2f} + {calls:.2f} = {total:.2f} s",
            f"{reference:.2f} s (the row above)",
            f"{reference / total:.1f}x at best",
            "-",
        )

    def state(self) -> list[Row]:
        rows: list[Row] = []
        store = StatusFile(self.work / "state-bench.xml")
        entries = {i: Entry(i, "1.0", "2026-01-01 00:00:00", "2026-01-02 00:00:00", None, "f" * 64) for i in range(10_000)}
        save = best_of(3, lambda: store.save(entries))
        load = best_of(3, store.load)
        rows.append(
            ("4. status XML with 10 000 entries: save / load", f"{save:.3f} s / {load:.3f} s", "-", "-", "well under 1 s")
        )
        timings = {}
        for count in (10_000, 40_000):
            known = {i: Entry(i, "1.0", fingerprint="a") for i in range(count)}
            observed = [Observed(i, "a" if i % 3 else "b", "1.0") for i in range(count)]
            timings[count] = best_of(3, functools.partial(make_plan, observed, known, 5))
        rows.append((
            "4. planning 10 000 / 40 000 requests",
            f"{timings[10_000] * 1000:.0f} ms / {timings[40_000] * 1000:.0f} ms",
            "-",
            f"{timings[40_000] / timings[10_000]:.1f}x for 4x",
            "linear (~4x)",
        ))
        return rows


def run_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "aktin_sftp", "--config", str(config), "run"]


def bare_status_calls(settings: BrokerConfig, ids: list[int]) -> None:
    """The status calls with nothing but http.client, each thread on one keep-alive connection."""
    address = urlsplit(settings.url)
    headers = {"Authorization": f"Bearer {settings.api_key.reveal()}"}
    tls = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)

    def share(part: list[int]) -> None:
        connection = (
            http.client.HTTPSConnection(address.hostname or "", address.port, context=tls)
            if address.scheme == "https" else http.client.HTTPConnection(address.hostname or "", address.port)
        )
        for request_id in part:
            connection.request("GET", f"/broker/request/{request_id}/status", headers=headers)
            connection.getresponse().read()
        connection.close()

    threads = [threading.Thread(target=share, args=(ids[k::settings.parallel],)) for k in range(settings.parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(block)


def measure(command: list[str]) -> tuple[float, float]:
    """Peak RSS in MiB and wall time of one child process."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as null:
        process = subprocess.Popen(command, stdout=null, stderr=null)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def best_of(times: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def best_in_turns(times: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Best times of two actions taken in turns, so that a slow phase of this shared machine
    hits both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(times):
        for index, action in enumerate((first, second)):
            best[index] = min(best[index], best_of(1, action))
    return best[0], best[1]


def print_table(rows: list[Row]) -> None:
    header: Row = ("goal", "ours", "reference", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nmachine: {platform.node()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
          f"{shutil.disk_usage('/').total >> 30} GiB disk")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    sys.exit(main())
