"""A real OpenSSH sshd serving only SFTP on 127.0.0.1, chrooted like a recipient's server.

sshd wants `/run/sshd` and a chroot path whose every component is root-owned and not writable
by others. A private mount namespace (`unshare --mount`) with a tmpfs on /run gives both, and
its own passwd/shadow there adds the SFTP user without touching the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

from tests.peers import free_port, stop, wait_for_port

USER = "aktinsftp"
UID = 4242
PASSWORD = "sftp-test-password"
SSHD = "/usr/sbin/sshd"


class SshServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.chroot = directory / "chroot"
        self.chroot.mkdir(mode=0o755)
        self.upload = self.chroot / "upload"
        self.upload.mkdir(mode=0o755)
        os.chown(self.upload, UID, UID)
        self.port = free_port()
        self.host_key = directory / "host_key"
        self.client_key = directory / "client_key"
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self._public(self.host_key)}\n")
        self._write_accounts()
        config = directory / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.host_key}
            PidFile none
            UsePAM no
            PermitRootLogin no
            PasswordAuthentication yes
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            AuthorizedKeysFile /run/sftp/keys/%u
            AllowUsers {USER}
            Subsystem sftp internal-sftp
            ForceCommand internal-sftp
            ChrootDirectory /run/sftp/chroot
            AllowTcpForwarding no
            X11Forwarding no
            MaxStartups 100
            LogLevel VERBOSE
            """))
        script = textwrap.dedent(f"""\
            set -e
            mount -t tmpfs -o mode=755 tmpfs /run
            mkdir -m 755 /run/sshd /run/sftp /run/sftp/chroot /run/sftp/keys
            mount --bind {self.chroot} /run/sftp/chroot
            install -m 644 {self.client_key}.pub /run/sftp/keys/{USER}
            for f in passwd shadow group; do mount --bind {directory}/$f /etc/$f; done
            exec {SSHD} -D -e -f {config}
            """)
        self.log = open(directory / "sshd.log", "wb")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, 20)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text()[-2000:]}") from None

    @staticmethod
    def _public(key: Path) -> str:
        kind, blob = Path(f"{key}.pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def _write_accounts(self) -> None:
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", "aktintest", PASSWORD], check=True, capture_output=True, text=True
        ).stdout.strip()
        for name, line in (
            ("passwd", f"{USER}:x:{UID}:{UID}::/upload:/bin/sh"),
            ("shadow", f"{USER}:{hashed}:19000:0:99999:7:::"),
            ("group", f"{USER}:x:{UID}:"),
        ):
            target = self.directory / name
            shutil.copyfile(f"/etc/{name}", target)
            with open(target, "a") as handle:
                handle.write(line + "\n")
            target.chmod(0o640 if name == "shadow" else 0o644)

    def folder(self, name: str) -> Path:
        """A fresh folder for one test, owned by the SFTP user; returns its local path."""
        path = self.upload / name
        path.mkdir()
        os.chown(path, UID, UID)
        return path

    def via_proxy(self, config: Path, port: int) -> None:
        """Rewrites a config written for this sshd (tests/peers/client.py) to reach it through a
        proxy listening on `port`, with a known_hosts file next to it that names that port."""
        known_hosts = config.with_name(f"{config.stem}_known_hosts")
        known_hosts.write_text(self.known_hosts.read_text().replace(f"]:{self.port} ", f"]:{port} "))
        text = config.read_text().replace(f"port = {self.port}", f"port = {port}")
        config.write_text(text.replace(str(self.known_hosts), str(known_hosts)))

    @staticmethod
    def remote(local: Path) -> str:
        """The path the SFTP user sees for a folder made by `folder`."""
        return f"/upload/{local.name}"

    def stop(self) -> None:
        stop(self.process, 10)
        self.log.close()
