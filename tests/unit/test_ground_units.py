"""Gateway building blocks on their own: config, crypto, self-describing records, placement, memory."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.errors import DataLoss, FailedPrecondition, InvalidArgument, Unavailable
from orbitvault.ground import selfdesc
from orbitvault.ground.catalog import ObjectRecord
from orbitvault.ground.config import GatewayConfig, load_gateway_config
from orbitvault.ground.crypto import MasterKey, SegmentSealer
from orbitvault.ground.model import Retention, RetentionMode
from orbitvault.ground.placement import Candidate, choose, place_stripe
from tests.unit.ground_fakes import Env

# --- config ---------------------------------------------------------------------------------------


def test_config_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "gateway.toml"
    f.write_text(
        'state_dir = "/srv/gw"\nnodes = ["10.0.0.1:7400", "10.0.0.2:7400"]\nnode_grace_s = 120\n'
        'fragment_size = "16KiB"\nmaster_key_file = "/etc/ov/master.key"\n'
    )
    cfg = load_gateway_config(f, env={"ORBITVAULT_GATEWAY_NODE_GRACE_S": "300", "OTHER": "x"})
    assert cfg.state_dir == Path("/srv/gw") and cfg.nodes == ("10.0.0.1:7400", "10.0.0.2:7400")
    assert cfg.node_grace_s == 300.0 and cfg.fragment_size == 16384
    assert cfg.master_key_file == Path("/etc/ov/master.key")
    cfg = load_gateway_config(f, env={}, overrides={"node_grace_s": 5, "nodes": "a:1,b:2", "listen": None})
    assert cfg.node_grace_s == 5.0 and cfg.nodes == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bogus = 1", "unknown gateway setting 'bogus'"),
        ("node_grace_s = -1", "node_grace_s .* greater than 0"),
        ('nodes = ["nohost"]', "host:port"),
        ('nodes = ["a:1", "a:1"]', "twice"),
        ("max_put_concurrency = 0", "max_put_concurrency"),
        ('master_key_passphrase = "pw"', "master_key_salt"),
        ('master_key_passphrase = "pw"\nmaster_key_salt = "short"', "16 bytes"),
        ('stripe_size = "64MiB"', "17825792"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "g.toml"
    f.write_text(text)
    with pytest.raises(InvalidArgument, match=match):
        load_gateway_config(f, env={})


def test_config_env_unknown_key() -> None:
    with pytest.raises(InvalidArgument, match="environment variable ORBITVAULT_GATEWAY_NOPE"):
        load_gateway_config(env={"ORBITVAULT_GATEWAY_NOPE": "1"})


# --- crypto -----------------------------------------------------------------------------------------


def test_master_key_file_and_passphrase(tmp_path: Path) -> None:
    key = MasterKey.generate()
    path = tmp_path / "master.key"
    key.write_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert MasterKey.from_file(path).fingerprint() == key.fingerprint()
    with pytest.raises(InvalidArgument, match="overwrite"):
        key.write_file(path)
    (tmp_path / "bad.key").write_text("abcd")
    with pytest.raises(InvalidArgument, match="64 hex digits"):
        MasterKey.from_file(tmp_path / "bad.key")
    a = MasterKey.from_passphrase("correct horse", "salt-of-the-gateway")
    b = MasterKey.from_passphrase("correct horse", "salt-of-the-gateway")
    assert a.fingerprint() == b.fingerprint() and a.catalog_key == b.catalog_key
    assert a.catalog_key != key.catalog_key
    with pytest.raises(InvalidArgument, match="salt"):
        MasterKey.from_passphrase("pw", "short")
    assert "secret" in repr(a) and a.catalog_key.hex() not in repr(a)


def test_tenant_key_wrapping() -> None:
    m = MasterKey.generate()
    wrapped = m.wrap_tenant_key("acme", b"k" * 32)
    assert m.unwrap_tenant_key("acme", wrapped) == b"k" * 32
    with pytest.raises(FailedPrecondition):
        m.unwrap_tenant_key("other", wrapped)  # bound to the tenant
    with pytest.raises(FailedPrecondition):
        MasterKey.generate().unwrap_tenant_key("acme", wrapped)


def test_segments_are_bound_to_their_place() -> None:
    s = SegmentSealer(os.urandom(32), b"o" * 32)
    sealed = s.seal(3, 7, b"hello")
    assert len(sealed) == 5 + 16 and s.open(3, 7, sealed) == b"hello"
    with pytest.raises(DataLoss, match="stripe 3 segment 8"):
        s.open(3, 8, sealed)
    with pytest.raises(DataLoss):
        SegmentSealer(os.urandom(32), b"p" * 32).open(3, 7, sealed)


# --- self-describing records --------------------------------------------------------------------------


def _record(geometry: Geometry, key: str = "k", metadata: dict[str, str] | None = None) -> ObjectRecord:
    return ObjectRecord(
        object_id=os.urandom(32),
        tenant="acme",
        bucket="data",
        key=key,
        size=123,
        etag=os.urandom(32),
        created_unix_ms=1_700_000_000_000,
        content_type="text/plain",
        metadata=metadata or {},
        geometry=geometry,
        stripe_count=2,
        plain_per_stripe=1000,
        segment_size=500,
        wrapped_data_key=os.urandom(60),
        retention=Retention(RetentionMode.COMPLIANCE, 5),
        legal_hold=True,
    )


def test_catalog_record_round_trip_and_split() -> None:
    g = Geometry(4, 2, 4096, 65536)
    ck = os.urandom(32)
    rec = _record(g)
    pieces = selfdesc.pieces(ck, rec, b"t" * 60, complete=True)
    assert len(pieces) == 1 and len(pieces[0]) <= 2048
    got = selfdesc.assemble(ck, rec.object_id, g, pieces)
    assert got is not None and got.complete and got.record == rec and got.tenant_key_wrapped == b"t" * 60
    assert selfdesc.assemble(os.urandom(32), rec.object_id, g, pieces) is None  # another master key
    assert selfdesc.assemble(ck, os.urandom(32), g, pieces) is None  # bound to its object
    # a 1 KiB key and 1 KiB of metadata need two pieces: shard i carries piece i % 2
    big = _record(g, key="é" * 512, metadata={"m": "x" * 1000})
    pieces = selfdesc.pieces(ck, big, b"t" * 60, complete=True)
    assert len(pieces) == 2 and all(len(p) <= 2048 for p in pieces)
    headers = [selfdesc.piece_for(pieces, i) for i in range(g.n)]
    for lost in ([0, 2, 4], [1, 3], [0, 1]):
        kept = [h for i, h in enumerate(headers) if i not in lost]
        if len(lost) <= g.m:
            got = selfdesc.assemble(ck, big.object_id, g, kept)
            assert got is not None and got.record.key == big.key
    with pytest.raises(InvalidArgument, match="too long"):
        selfdesc.check_fits(_record(Geometry(2, 2, 4096, 65536), key="é" * 512, metadata={"m": "x" * 1000}), b"")


# --- placement --------------------------------------------------------------------------------------


def test_placement_spreads_planes_and_skips_full_nodes() -> None:
    cands = [Candidate(bytes([i]) * 32, f"p{i % 3}", 10_000) for i in range(9)]
    cands.append(Candidate(b"f" * 32, "p9", 10))  # no room
    for seed in range(20):
        chosen = choose(cands, 6, 100, rng=random.Random(seed))
        assert len({c.node_id for c in chosen}) == 6 and b"f" * 32 not in {c.node_id for c in chosen}
        assert sorted(c.plane for c in chosen) == ["p0", "p0", "p1", "p1", "p2", "p2"]
    # repair: one more shard next to existing ones goes to the least used plane
    chosen = choose(cands, 1, 100, used_planes=["p0", "p0", "p1", "p1", "p2"], rng=random.Random(1))
    assert chosen[0].plane == "p2"
    with pytest.raises(Unavailable, match="at least 5 distinct nodes"):
        place_stripe(cands[:4], 4, 2, 100)
    assert len(place_stripe(cands[:5], 4, 2, 100)) == 5


def test_placement_weighs_free_space() -> None:
    cands = [Candidate(b"a" * 32, "p", 1_000_000), Candidate(b"b" * 32, "p", 1_000)]
    picks = [choose(cands, 1, 10, rng=random.Random(s))[0].node_id for s in range(200)]
    assert picks.count(b"a" * 32) > 180


# --- bounded memory ---------------------------------------------------------------------------------


def _stream(total: int, chunk: int = 20_000) -> Iterator[bytes]:
    rng = random.Random(5)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield rng.randbytes(n)


def test_memory_does_not_grow_with_the_object(tmp_path: Path) -> None:
    env = Env(tmp_path)
    try:
        peaks = []
        pps = 7 * Env.SEGMENT
        for stripes in (4, 40):
            size = stripes * pps
            tracemalloc.start()
            env.gw.put_object(env.p, "data", f"o{stripes}", _stream(size), size=size)
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            _, chunks = env.gw.get_object(env.p, "data", f"o{stripes}")
            assert sum(len(c) for c in chunks) == size
            _, get_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            peaks.append((put_peak, get_peak))
        (small_put, small_get), (big_put, big_get) = peaks
        assert big_put < 1.5 * small_put + 200_000, peaks  # 10x the data, about the same memory
        assert big_get < 1.5 * small_get + 200_000, peaks
        assert big_put < 20 * 65536, peaks  # a few stripes' worth, never the object (2.3 MB)
    finally:
        env.close()


def test_gateway_config_validates_directly(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="segment_size"):
        GatewayConfig(state_dir=tmp_path, segment_size=10)
    with pytest.raises(InvalidArgument, match="not both"):
        GatewayConfig(state_dir=tmp_path, master_key_file=tmp_path / "k", master_key_passphrase="x" * 20,
                      master_key_salt="s" * 16)  # fmt: skip
