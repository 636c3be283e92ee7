"""The reference for `make bench`: the upstream uploader's way of doing the same work, written
afresh here (not its code): one new HTTP connection per call, strictly in sequence, and each
bundle held in memory twice, plain and encrypted.

    python -m tests.bench_reference delivery CONFIG REQUEST_ID
    python -m tests.bench_reference unchanged CONFIG
    python -m tests.bench_reference first CONFIG     (every tagged request, over one SFTP login)
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import paramiko
import requests
from cryptography.fernet import Fernet

from aktin_sftp import config as config_module
from aktin_sftp.broker import NS, REQUEST_TYPE, tag_predicate
from aktin_sftp.config import Config


def headers(settings: Config, accept: str = "application/xml") -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.broker.api_key.reveal()}", "Accept": accept}


def verify(settings: Config) -> str | bool:
    return str(settings.broker.ca_bundle) if settings.broker.ca_bundle else True


def sftp_client(settings: Config) -> paramiko.SFTPClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(settings.sftp.known_hosts))
    password = settings.sftp.password.reveal() if settings.sftp.password else None
    client.connect(
        settings.sftp.host, port=settings.sftp.port, username=settings.sftp.username, password=password,
        allow_agent=False, look_for_keys=False,
    )
    return client.open_sftp()


def delivery(settings: Config, request_id: int) -> None:
    url = settings.broker.url
    token = requests.post(f"{url}/broker/export/request-bundle/{request_id}", headers=headers(settings, "text/plain")).text
    bundle = requests.get(f"{url}/broker/download/{token}", headers=headers(settings)).content
    encrypted = Fernet(Path(settings.key_file).read_bytes().strip()).encrypt(bundle)
    local = settings.state_dir / f"export_{request_id}.zip"
    local.write_bytes(encrypted)
    sftp_client(settings).put(str(local), f"{settings.sftp.folder}/export_{request_id}.zip")
    local.unlink()


def first(settings: Config) -> None:
    """The first delivery of every tagged request, one after another as upstream does it:
    listing, then per request its status, export, download, encryption and `put` (open, writes,
    close, stat), all over one SFTP login."""
    url = settings.broker.url
    listing = requests.get(
        f"{url}/broker/request/filtered",
        params={"type": REQUEST_TYPE, "predicate": tag_predicate(settings.broker.tag)}, headers=headers(settings),
    )
    sftp = sftp_client(settings)
    fernet = Fernet(Path(settings.key_file).read_bytes().strip())
    for element in ET.fromstring(listing.content).iter(f"{NS}request"):
        request_id = element.get("id")
        requests.get(f"{url}/broker/request/{request_id}/status", headers=headers(settings))
        token = requests.post(f"{url}/broker/export/request-bundle/{request_id}", headers=headers(settings, "text/plain")).text
        bundle = requests.get(f"{url}/broker/download/{token}", headers=headers(settings)).content
        local = settings.state_dir / f"export_{request_id}.zip"
        local.write_bytes(fernet.encrypt(bundle))
        sftp.put(str(local), f"{settings.sftp.folder}/export_{request_id}.zip")
        local.unlink()


def unchanged(settings: Config) -> None:
    url = settings.broker.url
    requests.head(f"{url}/broker/status", verify=verify(settings))
    listing = requests.get(
        f"{url}/broker/request/filtered",
        params={"type": REQUEST_TYPE, "predicate": tag_predicate(settings.broker.tag)}, headers=headers(settings),
        verify=verify(settings),
    )
    completions = {}
    for element in ET.fromstring(listing.content).iter(f"{NS}request"):
        request_id = element.get("id")
        answer = requests.get(f"{url}/broker/request/{request_id}/status", headers=headers(settings), verify=verify(settings))
        status = ET.fromstring(answer.content)
        rows = status.findall(f"{NS}request-status-info")
        done = sum(1 for row in rows if row.find(f"{NS}completed") is not None)
        completions[request_id] = round(done / len(rows), 2) if rows else 0.0
    status_xml = settings.state_dir / "status.xml"
    sftp_client(settings).put(str(status_xml), f"{settings.sftp.folder}/status.xml")
    print(f"{len(completions)} requests compared")


if __name__ == "__main__":
    loaded = config_module.load(Path(sys.argv[2]))
    if sys.argv[1] == "delivery":
        delivery(loaded, int(sys.argv[3]))
    elif sys.argv[1] == "first":
        first(loaded)
    else:
        unchanged(loaded)
