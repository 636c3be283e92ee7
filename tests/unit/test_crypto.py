"""Our streamed Fernet tokens are exactly what `cryptography.fernet.Fernet` makes and reads."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import cli, crypto

SIZES = [0, 1, 15, 16, 17, crypto.CHUNK - 1, crypto.CHUNK, crypto.CHUNK + 1, 3 * crypto.CHUNK + 7]


@pytest.fixture
def key() -> bytes:
    return Fernet.generate_key()


@pytest.mark.parametrize("size", SIZES)
def test_our_tokens_decrypt_with_fernet(key: bytes, size: int) -> None:
    plain = os.urandom(size)
    token = io.BytesIO()
    length = crypto.encrypt_stream(base64.urlsafe_b64decode(key), io.BytesIO(plain), token)
    assert length == len(token.getvalue())
    assert Fernet(key).decrypt(token.getvalue()) == plain


def test_same_inputs_give_the_same_token_as_fernet(key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    iv = os.urandom(16)
    monkeypatch.setattr(os, "urandom", lambda n: iv)
    ours = io.BytesIO()
    crypto.encrypt_stream(base64.urlsafe_b64decode(key), io.BytesIO(b"zip bytes"), ours, now=1_700_000_000)
    assert ours.getvalue() == Fernet(key)._encrypt_from_parts(b"zip bytes", 1_700_000_000, iv)


@pytest.mark.parametrize("size", SIZES)
def test_fernet_tokens_decrypt_with_ours(key: bytes, size: int, tmp_path: Path) -> None:
    plain = os.urandom(size)
    (tmp_path / "token").write_bytes(Fernet(key).encrypt(plain))
    out = io.BytesIO()
    crypto.decrypt_file(base64.urlsafe_b64decode(key), tmp_path / "token", out)
    assert out.getvalue() == plain


def decrypt_command(key: bytes, tmp_path: Path, token: Path) -> int:
    (tmp_path / "key").write_bytes(key)
    (tmp_path / "key").chmod(0o600)
    return cli.main(["decrypt", "--key-file", str(tmp_path / "key"), str(token), str(tmp_path / "out.zip")])


def test_changed_token_or_wrong_key_leaves_no_output(key: bytes, tmp_path: Path) -> None:
    token = bytearray(Fernet(key).encrypt(os.urandom(3 * crypto.CHUNK)))
    token[100] = ord("A") if token[100] != ord("A") else ord("B")
    (tmp_path / "token").write_bytes(bytes(token))
    assert decrypt_command(key, tmp_path, tmp_path / "token") == 1
    (tmp_path / "token").write_bytes(Fernet(Fernet.generate_key()).encrypt(b"x"))
    assert decrypt_command(key, tmp_path, tmp_path / "token") == 1
    assert decrypt_command(key, tmp_path, tmp_path / "missing") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "token"]


def test_a_file_that_changes_while_it_is_read_is_read_once(key: bytes, tmp_path: Path) -> None:
    """A FIFO gives a good token to the first reader and another one to the next: what is
    decrypted must be what was checked."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)

    def serve() -> None:
        for plain in (b"checked", b"swapped"):
            with open(fifo, "wb") as handle:
                handle.write(Fernet(key).encrypt(plain))
            # Lets the reader see the end of the first file before the second one is offered.
            time.sleep(0.3)

    writer = threading.Thread(target=serve, daemon=True)
    writer.start()
    assert decrypt_command(key, tmp_path, fifo) == 0
    assert (tmp_path / "out.zip").read_bytes() == b"checked"
    with open(fifo, "rb") as handle:
        handle.read()
    writer.join(5)


# The second one fills a whole read with whitespace, so that the first decoded piece is empty.
@pytest.mark.parametrize("space", [b"  \n", b" " * (crypto.CHUNK // 3 * 4)])
def test_a_token_with_surrounding_whitespace_decrypts(key: bytes, tmp_path: Path, space: bytes) -> None:
    (tmp_path / "token").write_bytes(space + Fernet(key).encrypt(b"zip bytes") + b"\n")
    assert decrypt_command(key, tmp_path, tmp_path / "token") == 0
    assert (tmp_path / "out.zip").read_bytes() == b"zip bytes"


@pytest.mark.parametrize("text", [b"", b"short", b"A" * 44, b"!" * 44])
def test_a_bad_key_file_is_refused(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(text)
    with pytest.raises(crypto.InvalidKeyError):
        crypto.load_key(path)


def test_a_key_file_with_a_newline_loads(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "key").write_bytes(key + b"\n")
    assert crypto.load_key(tmp_path / "key") == base64.urlsafe_b64decode(key)


def test_several_keys_open_files_of_either_during_a_key_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new, other = (Fernet.generate_key() for _ in range(3))
    for name, value in (("old.key", old), ("new.key", new), ("other.key", other)):
        (tmp_path / name).write_bytes(value + b"\n")
    (tmp_path / "a").write_bytes(Fernet(old).encrypt(b"from before"))
    (tmp_path / "b").write_bytes(Fernet(new).encrypt(b"from after"))
    keys = ["--key-file", str(tmp_path / "new.key"), "--key-file", str(tmp_path / "old.key")]
    assert cli.main(["decrypt", *keys, str(tmp_path / "a"), str(tmp_path / "a.zip")]) == 0
    assert cli.main(["decrypt", *keys, str(tmp_path / "b"), str(tmp_path / "b.zip")]) == 0
    assert (tmp_path / "a.zip").read_bytes() == b"from before"
    assert (tmp_path / "b.zip").read_bytes() == b"from after"
    shown = capsys.readouterr().out
    assert f"decrypted with {tmp_path / 'old.key'} (key id {crypto.key_id(base64.urlsafe_b64decode(old))})" in shown
    assert f"decrypted with {tmp_path / 'new.key'}" in shown
    (tmp_path / "c").write_bytes(Fernet(other).encrypt(b"x"))
    assert cli.main(["decrypt", *keys, str(tmp_path / "c"), str(tmp_path / "c.zip")]) == 1
    assert "none of the 2 keys opens it" in capsys.readouterr().err
    assert not (tmp_path / "c.zip").exists() and not (tmp_path / ".c.zip.part").exists()


def test_the_key_id_is_what_a_recipient_computes_from_the_key_file(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    (tmp_path / "key").write_bytes(key + b"\n")
    shell = subprocess.run(
        ["sh", "-c", f"tr -d '\\n' < {tmp_path / 'key'} | sha256sum | cut -c1-16"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert crypto.key_id(crypto.load_key(tmp_path / "key")) == shell == hashlib.sha256(key).hexdigest()[:16]
