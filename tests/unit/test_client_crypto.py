from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from orbitvault.client.crypto import (
    SEAL_OVERHEAD,
    KdfParams,
    MasterKey,
    blob_aad,
    derive_password_key,
    object_aad,
    object_id,
    unwrap,
    wrap,
)
from orbitvault.client.errors import CorruptObject, InvalidFormat


def test_seal_open_roundtrip_and_overhead() -> None:
    k = MasterKey.generate()
    sealed = k.seal(b"hello", object_aad("snapshot"))
    assert len(sealed) == 5 + SEAL_OVERHEAD
    assert k.open(sealed, object_aad("snapshot")) == b"hello"
    assert k.open(memoryview(sealed), object_aad("snapshot")) == b"hello"


def test_every_seal_uses_a_fresh_subkey() -> None:
    k = MasterKey.generate()
    a, b = k.seal(b"same", b""), k.seal(b"same", b"")
    assert a[:24] != b[:24] and a != b


@pytest.mark.parametrize("where", [0, 10, 30, -1])
def test_tampering_is_detected(where: int) -> None:
    k = MasterKey.generate()
    sealed = bytearray(k.seal(b"some plaintext", b"aad"))
    sealed[where] ^= 1
    with pytest.raises(CorruptObject):
        k.open(bytes(sealed), b"aad")


def test_aad_binds_kind_and_blob_id() -> None:
    k = MasterKey.generate()
    sealed = k.seal(b"x", blob_aad(0, b"\x01" * 32))
    with pytest.raises(CorruptObject):
        k.open(sealed, blob_aad(0, b"\x02" * 32))
    with pytest.raises(CorruptObject):
        k.open(sealed, blob_aad(1, b"\x01" * 32))
    with pytest.raises(CorruptObject):
        MasterKey.generate().open(sealed, blob_aad(0, b"\x01" * 32))


def test_blob_ids_are_keyed_and_object_ids_are_not() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    assert a.blob_id(b"data") != b.blob_id(b"data")
    assert a.blob_id(b"data") == a.blob_id(memoryview(b"data"))
    assert object_id(b"data") == object_id(bytearray(b"data")) and len(object_id(b"")) == 32


def test_master_key_size_is_checked() -> None:
    with pytest.raises(InvalidFormat):
        MasterKey(b"short")


def test_password_wrapping() -> None:
    params = KdfParams(1, 1024, 1)
    wk = derive_password_key(b"pw", b"s" * 16, params)
    assert wk == derive_password_key(b"pw", b"s" * 16, params)
    assert wk != derive_password_key(b"pw2", b"s" * 16, params)
    data = wrap(wk, b"master", b"aad")
    assert unwrap(wk, data, b"aad") == b"master"
    with pytest.raises(InvalidTag):
        unwrap(derive_password_key(b"other", b"s" * 16, params), data, b"aad")


def test_kdf_params_bounds() -> None:
    with pytest.raises(InvalidFormat):
        derive_password_key(b"pw", b"s" * 16, KdfParams(1, 64 * 1024 * 1024, 1))
