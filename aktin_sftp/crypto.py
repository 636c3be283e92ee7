"""Fernet tokens produced and checked in a stream, so a bundle of any size needs flat memory.

The output is byte-for-byte the format of `cryptography.fernet.Fernet.encrypt` (see the Fernet
spec): `0x80 | timestamp | IV | AES-128-CBC(PKCS7(plain)) | HMAC-SHA256`, urlsafe-base64 encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from aktin_sftp.faults import checkpoint

VERSION = b"\x80"
HEADER_SIZE = 1 + 8 + 16
MAC_SIZE = 32
# A multiple of both 3 (base64 input) and 16 (AES block) keeps every chunk boundary clean.
CHUNK = 3 * 16 * 21_846


class InvalidKeyError(ValueError):
    pass


class InvalidTokenError(ValueError):
    pass


class WrongKeyError(InvalidTokenError):
    """A well-formed token whose MAC this key does not confirm."""


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


def generate_key() -> bytes:
    return base64.urlsafe_b64encode(os.urandom(32))


def load_key(path: Path) -> bytes:
    """Reads a key file as written by `Fernet.generate_key()` and returns the 32 raw bytes."""
    text = path.read_bytes().strip()
    try:
        raw = base64.urlsafe_b64decode(text)
    except binascii.Error:
        raw = b""
    if len(raw) != 32 or len(text) != 44:
        raise InvalidKeyError("is not a Fernet key (44 characters of urlsafe base64)")
    return raw


def key_id(key: bytes) -> str:
    """Names a key without revealing anything of it: the first 16 hex digits of the SHA-256 of
    the key file's text, so that a recipient can compute it too
    (`tr -d '\\n' < KEY | sha256sum | cut -c1-16`)."""
    return hashlib.sha256(base64.urlsafe_b64encode(key)).hexdigest()[:16]


def encrypt_stream(key: bytes, source: BinaryIO, target: Writer, now: int | None = None) -> int:
    """Writes the Fernet token of everything in `source` to `target`; returns its length."""
    signer = hmac.HMAC(key[:16], hashes.SHA256())
    encoder = _Base64Writer(target)

    def emit(data: bytes) -> None:
        signer.update(data)
        encoder.write(data)

    iv = os.urandom(16)
    emit(VERSION + struct.pack(">Q", int(time.time()) if now is None else now) + iv)
    encryptor = Cipher(algorithms.AES(key[16:]), modes.CBC(iv)).encryptor()
    padder = padding.PKCS7(128).padder()
    while chunk := source.read(CHUNK):
        emit(encryptor.update(padder.update(chunk)))
        checkpoint("encrypt")
    emit(encryptor.update(padder.finalize()) + encryptor.finalize())
    encoder.write(signer.finalize())
    return encoder.close()


def decrypt_file(key: bytes, source: Path, target: Writer) -> None:
    """Decrypts the token in one pass, checking its MAC as it goes. The bytes written to `target`
    are trustworthy only once this returns: on InvalidTokenError the caller must discard them.
    (Checking first and decrypting a second read would trust a file that changed in between.)"""
    signer = hmac.HMAC(key[:16], hashes.SHA256())
    unpadder = padding.PKCS7(128).unpadder()
    decryptor = None
    held = b""
    body_size = 0
    for chunk in _decoded(source):
        held += chunk
        if decryptor is None:
            if len(held) < HEADER_SIZE + MAC_SIZE:
                continue
            header, held = held[:HEADER_SIZE], held[HEADER_SIZE:]
            if header[:1] != VERSION:
                raise InvalidTokenError("not a Fernet token (unknown version byte)")
            signer.update(header)
            decryptor = Cipher(algorithms.AES(key[16:]), modes.CBC(header[9:25])).decryptor()
        # The last 32 bytes seen so far may be the MAC, so they wait for the next chunk.
        body, held = held[:-MAC_SIZE], held[-MAC_SIZE:]
        body_size += len(body)
        signer.update(body)
        target.write(unpadder.update(decryptor.update(body)))
    if decryptor is None or body_size < 16:
        raise InvalidTokenError("too short to be a Fernet token")
    try:
        signer.verify(held)
    except InvalidSignature as exc:
        raise WrongKeyError("wrong key, or the file was changed or cut short") from exc
    try:
        target.write(unpadder.update(decryptor.finalize()) + unpadder.finalize())
    except ValueError as exc:
        raise InvalidTokenError("padding is broken") from exc


def _decoded(source: Path) -> Iterator[bytes]:
    with open(source, "rb") as handle:
        rest = b""
        while chunk := handle.read(CHUNK // 3 * 4):
            data = rest + b"".join(chunk.split())
            cut = len(data) - len(data) % 4
            rest = data[cut:]
            try:
                yield base64.urlsafe_b64decode(data[:cut])
            except binascii.Error as exc:
                raise InvalidTokenError("not base64") from exc
        if rest:
            raise InvalidTokenError("not base64 (length is not a multiple of 4)")


class _Base64Writer:
    def __init__(self, target: Writer) -> None:
        self.target = target
        self.pending = b""
        self.written = 0

    def write(self, data: bytes) -> None:
        data = self.pending + data
        cut = len(data) - len(data) % 3
        self.pending = data[cut:]
        self._put(data[:cut])

    def close(self) -> int:
        self._put(self.pending)
        self.pending = b""
        return self.written

    def _put(self, data: bytes) -> None:
        if data:
            encoded = base64.urlsafe_b64encode(data)
            self.target.write(encoded)
            self.written += len(encoded)
