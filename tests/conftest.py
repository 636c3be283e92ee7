from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.peers import broker as broker_peer
from tests.peers.client import write_config, write_key
from tests.peers.sshd import SshServer
from tests.peers.toxiproxy import Toxiproxy

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("AKTIN_SFTP_HIDE_TOMLLIB"):
    # Runs the suite as on Python 3.10, which has no tomllib and uses tomli instead.
    sys.modules["tomllib"] = None  # type: ignore[assignment]


# Set by `make floor` to the constraints file its venv was built with.
FLOOR = os.environ.get("AKTIN_SFTP_FLOOR")


def libraries() -> str:
    """The versions of the product's libraries that this run imports."""
    found = []
    for requirement in metadata.requires("aktin-broker-sftp") or []:
        name = re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0]
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:  # tomli, where Python has tomllib and the system no python3-tomli
            pass
    return ", ".join(found)


def pytest_report_header() -> list[str]:
    run = f"floor run, the oldest supported libraries ({FLOOR}), " if FLOOR else ""
    return [
        f"AKTIN Broker: {broker_peer.which()}",
        f"{run}Python {platform.python_version()} ({sys.executable}): {libraries()}",
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FLOOR and sys.version_info[:2] != (3, 10):
        terminalreporter.write_line(
            "NOTE: Python 3.10 itself was not tried here: no python3.10 was found on this machine, so the floor run "
            f"used Python {platform.python_version()}"
        )


@pytest.fixture(scope="session")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker_peer.BrokerServer]:
    """The real broker where its jars are present, else the double held to it."""
    server = broker_peer.start(tmp_path_factory.mktemp("broker"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("the SFTP tests need root and OpenSSH's sshd ('make test' installs it)")
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    server = Toxiproxy(tmp_path_factory.mktemp("toxiproxy"))
    yield server
    server.stop()


@dataclass
class Setup:
    """One test's own tag, SFTP folder, key, state directory and config file."""

    tag: str
    folder: Path
    remote_folder: str
    state_dir: Path
    key: bytes
    config: Path

    def command(self, config: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "aktin_sftp", "--config", str(config or self.config)]

    def run(self, *args: str, config: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.command(config), *args], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)

    def variant(self, old: str, new: str) -> Path:
        """A copy of this test's config with one text replaced."""
        path = self.config.with_name("variant.toml")
        text = self.config.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
        path.chmod(0o600)
        return path

    def remote_files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())

    def decrypt(self, name: str) -> bytes:
        return Fernet(self.key).decrypt((self.folder / name).read_bytes())


@pytest.fixture
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, broker_server: broker_peer.BrokerServer, ssh_server: SshServer
) -> Setup:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    name = f"{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}"
    folder = ssh_server.folder(name)
    key_file = tmp_path / "fernet.key"
    key = write_key(key_file)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "sftp.toml", broker_server.url, ssh_server, folder, name, key_file, state_dir)
    return Setup(name, folder, SshServer.remote(folder), state_dir, key, config)
