"""`make demo`: one delivery on a local default.

Starts an AKTIN Broker (the real one where its jars are present, else the double held to it)
and an OpenSSH sshd on 127.0.0.1, lets two hospitals answer a few tagged requests, runs
`aktin-broker-sftp run` once, prints `status`, the remote folder and what one delivered file
holds once decrypted, and stops both servers again.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.peers import broker as broker_peer
from tests.peers.client import write_config, write_key
from tests.peers.sshd import SshServer

TAG = "rki"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="aktin-sftp-demo-") as temporary:
        work = Path(temporary)
        print(f"starting {broker_peer.which()}", flush=True)
        broker = broker_peer.start(work / "broker")
        try:
            sshd = SshServer(work / "sshd")
            try:
                return demo(work, broker, sshd)
            finally:
                sshd.stop()
        finally:
            broker.stop()


def demo(work: Path, broker: broker_peer.BrokerServer, sshd: SshServer) -> int:
    first, second = broker.nodes["Schwarzwaldklinik"], broker.nodes["Sachsenklinik"]
    for number in range(3):
        request_id = broker.create_request([TAG], title=f"demo request {number}")
        first.submit(request_id, f"Schwarzwaldklinik, request {request_id}: 42 cases\n".encode())
        if number:
            second.submit(request_id, f"Sachsenklinik, request {request_id}: 17 cases\n".encode())
    broker.create_request(["not-for-the-recipient"], title="untagged")
    folder = sshd.folder("rki")
    key_file = work / "fernet.key"
    write_key(key_file)
    config = write_config(work / "sftp.toml", broker.url, sshd, folder, TAG, key_file, work / "state")
    command = [sys.executable, "-m", "aktin_sftp", "--config", str(config)]
    print(f"$ aktin-broker-sftp --config {config} run", flush=True)
    code = subprocess.run([*command, "run"]).returncode
    if code:
        return code
    print(f"\n$ aktin-broker-sftp --config {config} status", flush=True)
    subprocess.run([*command, "status"], check=True)
    print(f"\nremote folder {SshServer.remote(folder)}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:20} {path.stat().st_size:>8} bytes")
    delivered = sorted(folder.glob("export_*.zip"))[-1]
    plain = work / "decrypted.zip"
    print(f"\n$ aktin-broker-sftp decrypt --key-file {key_file} {delivered.name} decrypted.zip", flush=True)
    subprocess.run([*command, "decrypt", "--key-file", str(key_file), str(delivered), str(plain)], check=True)
    with zipfile.ZipFile(plain) as bundle:
        for entry in bundle.infolist():
            print(f"  {entry.filename:30} {entry.file_size:>6} bytes")
    return receive(work, folder, key_file)


def receive(work: Path, folder: Path, key_file: Path) -> int:
    """The recipient's side: everything status.xml vouches for, checked and decrypted into an inbox."""
    config = work / "receive.toml"
    config.write_text(f"""[source]
folder = "{folder}"

[keys]
files = ["{key_file}"]

[inbox]
directory = "{work / 'inbox'}"

[state]
directory = "{work / 'receive-state'}"
""")
    config.chmod(0o600)
    command = [sys.executable, "-m", "aktin_sftp", "--config", str(config), "receive"]
    print(f"\n$ aktin-broker-sftp --config {config} receive", flush=True)
    code = subprocess.run(command).returncode
    if code:
        return code
    print(f"\n$ aktin-broker-sftp --config {config} receive --status", flush=True)
    subprocess.run([*command, "--status"], check=True)
    print(f"\ninbox {work / 'inbox'}:")
    for path in sorted((work / "inbox").iterdir()):
        print(f"  {path.name:20} {path.stat().st_size:>8} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
