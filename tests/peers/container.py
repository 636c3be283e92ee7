"""A Debian 12 system booted with systemd as PID 1 (systemd-nspawn), for the package tests.

The rootfs is debootstrapped once and cached as a tarball outside the clone; each test session
unpacks a fresh copy. The container shares the host's network, so the broker and sshd that the
tests start on 127.0.0.1 are reachable from inside.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers import stop
from tests.peers.broker import CACHE

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What an AKTIN broker server has, plus what the package tests need inside (pytest, tomli, man,
# and requests for the test harness that conftest.py loads).
PACKAGES = [
    "python3-paramiko", "python3-cryptography", "python3-defusedxml", "python3-systemd", "python3-tomli",
    "python3-pytest", "python3-requests", "man-db",
]
# Named by its package list, so that changing the list builds a new one instead of reusing a stale one.
TARBALL = CACHE / f"rootfs-{SUITE}-{hashlib.sha256(' '.join(PACKAGES).encode()).hexdigest()[:8]}.tar"


def rootfs_tarball() -> Path:
    if TARBALL.exists():
        return TARBALL
    CACHE.mkdir(parents=True, exist_ok=True)
    building = TARBALL.with_suffix(".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,python3,adduser", SUITE, str(building), MIRROR],
        check=True, capture_output=True,
    )
    # apt resolves the virtual packages (python3-cffi-backend-api-*) that debootstrap cannot.
    subprocess.run(
        ["chroot", str(building), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True, capture_output=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    subprocess.run(["chroot", str(building), "apt-get", "clean"], check=True)
    partial = TARBALL.with_suffix(".part")
    subprocess.run(["tar", "-C", str(building), "-cf", str(partial), "."], check=True)
    partial.rename(TARBALL)
    shutil.rmtree(building)
    return TARBALL


class Container:
    def __init__(self, directory: Path) -> None:
        self.root = directory / "root"
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(rootfs_tarball())], check=True)
        self.log = open(directory / "boot.log", "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit", "-M", "aktin-sftp-test"],
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
