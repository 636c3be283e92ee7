"""A Debian system booted with systemd as PID 1 (systemd-nspawn), for the package tests:
Debian 12 (bookworm) and Debian 13 (trixie).

The rootfs is debootstrapped once per release and cached as a tarball outside the clone; each
test session unpacks a fresh copy. The container shares the host's network, so the broker and
sshd that the tests start on 127.0.0.1 are reachable from inside. The Debian mirror is the
host's own (its apt sources), or AKTIN_SFTP_DEBIAN_MIRROR.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers import stop
from tests.peers.broker import CACHE

SUITES = ("bookworm", "trixie")
# What an AKTIN broker server has, plus what the package tests need inside (pytest, tomli, man,
# and requests for the test harness that conftest.py loads).
PACKAGES = [
    "python3-paramiko", "python3-cryptography", "python3-defusedxml", "python3-systemd", "python3-tomli",
    "python3-pytest", "python3-requests", "python3-websocket", "man-db",
]
MIRROR_VARIABLE = "AKTIN_SFTP_DEBIAN_MIRROR"


def tarball(suite: str) -> Path:
    # Named by its package list, so that changing the list builds a new one instead of reusing a stale one.
    return CACHE / f"rootfs-{suite}-{hashlib.sha256(' '.join(PACKAGES).encode()).hexdigest()[:8]}.tar"


def apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source the host's apt uses, one-line or deb822 style."""
    found: list[tuple[str, list[str]]] = []
    one_line = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], [words[2]]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ", "\t")):
                    name, value = line.split(":", 1)
                    fields[name.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                found.extend((uri, fields.get("suites", [])) for uri in fields.get("uris", []))
    return found


def debian_mirror() -> str:
    """The host's Debian mirror: the source that serves the host's own release (not its
    security or update suites), so that a machine behind a local mirror uses that mirror."""
    if os.environ.get(MIRROR_VARIABLE):
        return os.environ[MIRROR_VARIABLE]
    release = Path("/etc/os-release").read_text()
    codename = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", release, re.MULTILINE)
    for uri, suites in apt_sources():
        if codename and codename[1] in suites and not uri.rstrip("/").endswith("-security"):
            return uri
    raise RuntimeError(f"no Debian mirror among this host's apt sources; set {MIRROR_VARIABLE} to one")


def rootfs_tarball(suite: str) -> Path:
    target = tarball(suite)
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    building = target.with_suffix(".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,python3,adduser",
            suite, str(building), debian_mirror(),
        ],
        check=True, capture_output=True,
    )
    # apt resolves the virtual packages (python3-cffi-backend-api-*) that debootstrap cannot.
    subprocess.run(
        ["chroot", str(building), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True, capture_output=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    subprocess.run(["chroot", str(building), "apt-get", "clean"], check=True)
    partial = target.with_suffix(".part")
    subprocess.run(["tar", "-C", str(building), "-cf", str(partial), "."], check=True)
    partial.rename(target)
    shutil.rmtree(building)
    return target


class Container:
    def __init__(self, directory: Path, suite: str) -> None:
        self.suite = suite
        self.root = directory / "root"
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(rootfs_tarball(suite))], check=True)
        self.log = open(directory / "boot.log", "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit", "-M", f"aktin-sftp-{suite}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.leader = self._leader()
        state = self.run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
        if state not in ("running", "degraded"):
            raise RuntimeError(f"container did not boot ({state}): {(directory / 'boot.log').read_text()[-2000:]}")

    def _leader(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError("systemd-nspawn exited")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
            if children:
                # nsenter needs the namespaces to be set up; systemd's own journal shows that.
                time.sleep(1)
                return int(children[0])
            time.sleep(0.2)
        raise RuntimeError("container init did not start")

    def run(self, *command: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *command],
            capture_output=True, text=True, input=input, timeout=600,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def path(self, inside: str) -> Path:
        """The host path of a path inside the container."""
        return self.root / inside.lstrip("/")

    def stop(self) -> None:
        # nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
        stop(self.nspawn, 60)
        self.log.close()
