"""Encryption at rest: master key, key wrapping, segment sealing (design note §2, §8).

Key hierarchy: an offline master key (file or Argon2id passphrase) wraps each tenant key; a tenant
key wraps each object's random data key (or, SSE-C, the customer's key does, and only its blake3 is
kept); the data key seals the object in segments with AES-256-GCM. A catalog key derived from the
master key (HKDF-SHA256) encrypts the self-describing records in shard headers, so a gateway
rebuilt from orbit can read everything again once given the master key, and nodes never can.
"""

from __future__ import annotations

import hmac
import os
import struct
from pathlib import Path

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from orbitvault.errors import DataLoss, FailedPrecondition, InvalidArgument, PermissionDenied

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
WRAPPED_LEN = NONCE_LEN + KEY_LEN + TAG_LEN
# Argon2id cost for passphrases: 64 MiB, 3 passes (RFC 9106's second recommended option).
ARGON2_TIME = 3
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_LANES = 2

_SEG_NONCE = struct.Struct(">4xII")
_SEG_AAD = struct.Struct(">32sII")


class MasterKey:
    """The gateway's root secret; never stored by the gateway, only given to it."""

    __slots__ = ("_catalog", "_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise InvalidArgument(f"a master key is {KEY_LEN} bytes")
        self._key = key
        self._catalog = _hkdf(key, b"orbitvault catalog v1")

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_LEN))

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKey:
        """A file holding the key as 64 hex digits (whitespace ignored), as `write_file` makes it."""
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read the master key file {path}: {exc}") from None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != KEY_LEN:
            raise InvalidArgument(f"master key file {path} must hold {2 * KEY_LEN} hex digits (`gateway keygen`)")
        return cls(key)

    @classmethod
    def from_passphrase(cls, passphrase: str, salt: str | bytes) -> MasterKey:
        """Argon2id of the passphrase; the salt comes from the gateway config and must never change."""
        if not isinstance(passphrase, str) or not passphrase:
            raise InvalidArgument("the master key passphrase is empty")
        salt_b = salt.encode() if isinstance(salt, str) else salt
        if not isinstance(salt_b, bytes) or len(salt_b) < 16:
            raise InvalidArgument("the master key salt must be at least 16 bytes")
        key = hash_secret_raw(
            passphrase.encode(), salt_b, ARGON2_TIME, ARGON2_MEMORY_KIB, ARGON2_LANES, KEY_LEN, Type.ID
        )
        return cls(key)

    def write_file(self, path: str | Path) -> None:
        """Write the key as hex, mode 0600, atomically (temp file + rename); refuses to overwrite."""
        target = Path(path)
        if target.exists():
            raise InvalidArgument(f"{target} exists; refusing to overwrite a master key")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (self._key.hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, target)  # fails if the target appeared meanwhile, unlike rename
        os.unlink(tmp)

    @property
    def catalog_key(self) -> bytes:
        return self._catalog

    def derive(self, label: str) -> bytes:
        """A 32-byte key for one purpose (HKDF info "orbitvault <label> v1"): the audit chain's
        MAC key, the MFA secret wrapping key, MFA session signatures; never the master key itself."""
        return _hkdf(self._key, f"orbitvault {label} v1".encode())

    def fingerprint(self) -> bytes:
        """A public value that tells whether a state dir and a master key belong together."""
        return _hkdf(self._key, b"orbitvault master fingerprint v1")[:16]

    def wrap_tenant_key(self, tenant: str, tenant_key: bytes) -> bytes:
        return wrap_key(self._key, tenant_key, tenant.encode())

    def unwrap_tenant_key(self, tenant: str, wrapped: bytes) -> bytes:
        try:
            return unwrap_key(self._key, wrapped, tenant.encode())
        except InvalidTag:
            raise FailedPrecondition(
                f"tenant {tenant!r}: its key does not open with this master key; is it the gateway's master key?"
            ) from None


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(key)


def wrap_key(kek: bytes, key: bytes, aad: bytes) -> bytes:
    """nonce | AES-256-GCM(kek, key, aad): 60 bytes for a 32-byte key."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, key, aad)


def unwrap_key(kek: bytes, wrapped: bytes, aad: bytes) -> bytes:
    """Inverse of `wrap_key`; raises cryptography's InvalidTag on a wrong key or tampering."""
    if len(wrapped) != WRAPPED_LEN:
        raise InvalidTag()
    return AESGCM(kek).decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], aad)


def data_key_aad(tenant: str, object_id: bytes) -> bytes:
    return tenant.encode() + b"\x00" + object_id


def customer_key_hash(key: bytes) -> bytes:
    return blake3.blake3(key).digest()


def check_customer_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise InvalidArgument(f"a customer key is {KEY_LEN} bytes (AES-256)")
    return key


def open_customer_key(stored_hash: bytes, given: bytes | None) -> bytes:
    """The customer key if it matches the one the object was stored with."""
    if given is None:
        raise InvalidArgument("this object is encrypted with a customer key; give the same key to read it")
    check_customer_key(given)
    if not hmac.compare_digest(customer_key_hash(given), stored_hash):
        raise PermissionDenied("the customer key differs from the one this object was stored with")
    return given


class SegmentSealer:
    """AES-256-GCM over one object's segments: nonce 0^4 | stripe | segment, AAD object | stripe | segment.

    Nonces are unique because the data key is unique per object version; the AAD binds every
    segment to its place, so nodes cannot swap or replay segments unnoticed.
    """

    __slots__ = ("_aead", "object_id")

    def __init__(self, data_key: bytes, object_id: bytes) -> None:
        self._aead = AESGCM(data_key)
        self.object_id = object_id

    def seal(self, stripe: int, segment: int, plaintext: bytes | memoryview) -> bytes:
        return self._aead.encrypt(
            _SEG_NONCE.pack(stripe, segment), plaintext, _SEG_AAD.pack(self.object_id, stripe, segment)
        )

    def open(self, stripe: int, segment: int, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(
                _SEG_NONCE.pack(stripe, segment), sealed, _SEG_AAD.pack(self.object_id, stripe, segment)
            )
        except InvalidTag:
            raise DataLoss(
                f"object {self.object_id.hex()} stripe {stripe} segment {segment} failed authentication "
                "after decoding; its shards are damaged beyond what their checksums caught"
            ) from None


def seal_record(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_record(key: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """None when the record does not authenticate (foreign gateway, wrong master key, damage)."""
    if len(sealed) < NONCE_LEN + TAG_LEN:
        return None
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        return None
