"""An aktin-broker-sftp config pointing at the test peers."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from tests.peers.broker import ADMIN_KEY
from tests.peers.sshd import PASSWORD, USER, SshServer


def write_key(path: Path) -> bytes:
    key = Fernet.generate_key()
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return key


def write_config(
    path: Path, broker_url: str, sshd: SshServer, folder: Path, tag: str, key_file: Path, state_dir: Path, max_delete: int = 5
) -> Path:
    path.write_text(f"""\
[broker]
url = "{broker_url}"
api_key = "{ADMIN_KEY}"
tag = "{tag}"
timeout = 60

[sftp]
host = "127.0.0.1"
port = {sshd.port}
username = "{USER}"
password = "{PASSWORD}"
known_hosts = "{sshd.known_hosts}"
folder = "{SshServer.remote(folder)}"

[encryption]
key_file = "{key_file}"

[state]
directory = "{state_dir}"
max_delete = {max_delete}
""")
    path.chmod(0o600)
    return path
