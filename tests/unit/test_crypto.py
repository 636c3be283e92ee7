"""Our streamed Fernet tokens are exactly what `cryptography.fernet.Fernet` makes and reads."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import crypto

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


def test_changed_token_or_wrong_key_is_refused_before_any_output(key: bytes, tmp_path: Path) -> None:
    token = bytearray(Fernet(key).encrypt(os.urandom(1000)))
    token[100] = ord("A") if token[100] != ord("A") else ord("B")
    (tmp_path / "token").write_bytes(bytes(token))
    out = io.BytesIO()
    with pytest.raises(crypto.InvalidTokenError, match="wrong key"):
        crypto.decrypt_file(base64.urlsafe_b64decode(key), tmp_path / "token", out)
    (tmp_path / "token").write_bytes(Fernet(Fernet.generate_key()).encrypt(b"x"))
    with pytest.raises(crypto.InvalidTokenError):
        crypto.decrypt_file(base64.urlsafe_b64decode(key), tmp_path / "token", out)
    assert out.getvalue() == b""


@pytest.mark.parametrize("text", [b"", b"short", b"A" * 44, b"!" * 44])
def test_a_bad_key_file_is_refused(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(text)
    with pytest.raises(crypto.InvalidKeyError):
        crypto.load_key(path)


def test_a_key_file_with_a_newline_loads(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "key").write_bytes(key + b"\n")
    assert crypto.load_key(tmp_path / "key") == base64.urlsafe_b64decode(key)
