"""Reading known_hosts as OpenSSH writes it, and refusing what cannot be honoured."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aktin_sftp.errors import ConfigError
from aktin_sftp.sftp import load_known_hosts


@pytest.fixture(scope="module")
def public() -> str:
    """A host's public key as known_hosts has it (made without ssh-keygen, which the Debian
    container that also runs these tests does not have)."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def loaded(tmp_path: Path, text: str) -> paramiko.HostKeys:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    keys = paramiko.HostKeys()
    load_known_hosts(path, keys)
    return keys


def test_a_bracketed_port_22_entry_matches_the_bare_host(tmp_path: Path, public: str) -> None:
    keys = loaded(tmp_path, f"[sftp.example.org]:22 {public}\n[other.example.org]:2222 {public}\n")
    assert keys.lookup("sftp.example.org") is not None
    assert keys.lookup("[other.example.org]:2222") is not None
    assert keys.lookup("other.example.org") is None


def test_certificate_authorities_double_spaces_and_unknown_key_types_do_not_stop_loading(tmp_path: Path, public: str) -> None:
    keys = loaded(tmp_path, (
        "# a comment\n\n"
        f"@cert-authority *.example.org {public}\n"
        f"sftp.example.org  {public}\n"
        "legacy.example.org ssh-unknown-type AAAAB3NzaC1yc2EAAAA=\n"
    ))
    assert keys.lookup("sftp.example.org") is not None
    assert keys.lookup("legacy.example.org") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("@revoked * {public}", r"line 2: @revoked cannot be honoured"),
        ("sftp.example.org ssh-ed25519", r"line 2: not a valid known_hosts line"),
        ("sftp.example.org ssh-ed25519 not!base64", r"line 2: not a valid known_hosts line"),
    ],
    ids=["revoked", "no key", "broken key"],
)
def test_a_line_that_makes_the_file_unusable_is_a_config_error(tmp_path: Path, public: str, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loaded(tmp_path, f"sftp.example.org {public}\n{line.format(public=public)}\n")
