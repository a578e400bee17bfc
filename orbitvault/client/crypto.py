"""Keys, sealing and ids of the backup repository (FORMAT.md, "Cryptography").

One random 64-byte master key per repository. Everything secret is derived from it with blake3's
key-derivation mode, so a second implementation needs only blake3, AES-256-GCM and Argon2id:

- the encryption key (AES-256-GCM sub-keys are derived from it, one per sealed item);
- the id key (chunk and tree ids are keyed blake3 hashes, so the store cannot confirm contents).

Why a sub-key per sealed item instead of random nonces: AES-GCM's 96-bit nonce gives a collision
bound of ~2^32 messages per key with random nonces, which a repository written by many clients over
years can approach. Each item instead carries a random 192-bit salt; its AES key is
blake3(key=encryption key, salt) and the nonce is fixed (all zero). A key is thus used for exactly
one message, and two items share a key only if two 192-bit salts collide (~2^-64 after 2^64 items).
Items are self-contained, so prune copies them between packs verbatim.

The id of an object (pack, index, snapshot, key file) is the unkeyed blake3 of its stored bytes:
anyone (the gateway included) can verify an object's integrity without the password, and the hash
of ciphertext reveals nothing.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orbitvault.client.errors import CorruptObject, InvalidFormat

MASTER_KEY_SIZE = 64
SALT_SIZE = 24
TAG_SIZE = 16
SEAL_OVERHEAD = SALT_SIZE + TAG_SIZE
ID_SIZE = 32
_ZERO_NONCE = bytes(12)

ENCRYPTION_CONTEXT = "orbitvault 2025 repository v1 encryption key"
ID_CONTEXT = "orbitvault 2025 repository v1 id key"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters, stored in each key file (so they may differ per key)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    def validate(self) -> None:
        # Bounds keep a hostile key file from asking for absurd memory or time.
        if not (1 <= self.time_cost <= 64 and 8 <= self.memory_kib <= 4 * 1024 * 1024 and 1 <= self.parallelism <= 64):
            raise InvalidFormat(f"key file asks for unreasonable Argon2id parameters: {self}")


def derive_password_key(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """The 32-byte key that wraps the master key in one key file (Argon2id)."""
    params.validate()
    return hash_secret_raw(
        password,
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def wrap(wrapping_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce(12) || AES-256-GCM ciphertext+tag; for key files, whose wrapping key is used once."""
    nonce = os.urandom(12)
    return nonce + AESGCM(wrapping_key).encrypt(nonce, plaintext, aad)


def unwrap(wrapping_key: bytes, data: bytes, aad: bytes) -> bytes:
    if len(data) < 12 + TAG_SIZE:
        raise InvalidTag
    return AESGCM(wrapping_key).decrypt(data[:12], data[12:], aad)


def object_id(data: bytes | bytearray | memoryview) -> bytes:
    """Unkeyed blake3 of an object's stored bytes: its name in the repository."""
    return blake3.blake3(data, max_threads=1).digest()


class _SaltPool(threading.local):
    """Random salts from a per-thread buffer: one getrandom() call per 1024 salts, not per blob."""

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def take(self) -> bytes:
        if self.pos + SALT_SIZE > len(self.buf):
            self.buf, self.pos = os.urandom(SALT_SIZE * 1024), 0
        self.pos += SALT_SIZE
        return self.buf[self.pos - SALT_SIZE : self.pos]


class MasterKey:
    """The repository's master key and the keys derived from it."""

    __slots__ = ("_enc_key", "_id_key", "_salts", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != MASTER_KEY_SIZE:
            raise InvalidFormat(f"master key must be {MASTER_KEY_SIZE} bytes, got {len(raw)}")
        self.raw = raw
        self._enc_key = blake3.blake3(raw, derive_key_context=ENCRYPTION_CONTEXT).digest()
        self._id_key = blake3.blake3(raw, derive_key_context=ID_CONTEXT).digest()
        self._salts = _SaltPool()

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(MASTER_KEY_SIZE))

    def blob_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed blake3 of plaintext: the id of a data or tree blob."""
        return blake3.blake3(data, key=self._id_key).digest()

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """salt(24) || AES-256-GCM(sub-key(salt), zero nonce, plaintext, aad) || tag(16)."""
        salt = self._salts.take()
        subkey = blake3.blake3(salt, key=self._enc_key).digest()
        return salt + AESGCM(subkey).encrypt(_ZERO_NONCE, plaintext, aad)

    def open(self, sealed: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """Inverse of `seal`; raises CorruptObject when authentication fails."""
        if len(sealed) < SEAL_OVERHEAD:
            raise CorruptObject(f"sealed item too short ({len(sealed)} bytes)")
        mv = memoryview(sealed)
        subkey = blake3.blake3(mv[:SALT_SIZE], key=self._enc_key).digest()
        try:
            return AESGCM(subkey).decrypt(_ZERO_NONCE, mv[SALT_SIZE:], aad)
        except InvalidTag:
            raise CorruptObject("authentication failed (damaged, or sealed under another key)") from None


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    """Binds a sealed blob to its type and id, so entries cannot be swapped unnoticed."""
    return b"ov-blob" + bytes((blob_type,)) + blob_id


PACK_HEADER_AAD = b"ov-pack-header"


def object_aad(kind: str) -> bytes:
    """Binds a sealed repository object (config, index, snapshot, lock) to its kind."""
    return b"ov-object:" + kind.encode()
