from __future__ import annotations

import json
import os
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orbitvault.client.backend import LocalBackend, object_name
from orbitvault.client.backend_orbit import BlobCache
from orbitvault.client.chunker import ChunkerParams
from orbitvault.client.crypto import KdfParams
from orbitvault.client.errors import CorruptObject, RepositoryLocked, RepositoryNotFound, WrongPassword
from orbitvault.client.pack import BlobType
from orbitvault.client.repository import (
    Packer,
    Repository,
    decode_object,
    encode_object,
    lock_is_stale,
    remove_locks,
)
from orbitvault.errors import InvalidArgument

KDF = KdfParams(1, 1024, 1)
CHUNKS = ChunkerParams(4096, 16384, 65536, seed=3)


def _repo(tmp_path: Path, **kw: object) -> Repository:
    return Repository.init(LocalBackend(tmp_path / "r"), b"pw", kdf=KDF, chunker=CHUNKS, **kw)  # type: ignore[arg-type]


def test_init_open_and_passwords(tmp_path: Path) -> None:
    repo = _repo(tmp_path, pack_size=8192)
    be = LocalBackend(tmp_path / "r")
    again = Repository.open(be, b"pw")
    assert again.config == repo.config and again.key.raw == repo.key.raw
    assert again.config.pack_size == 8192 and again.config.chunker == CHUNKS
    with pytest.raises(WrongPassword):
        Repository.open(be, b"nope")
    with pytest.raises(InvalidArgument):
        Repository.init(be, b"pw", kdf=KDF)
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalBackend(tmp_path / "none"), b"pw")


def test_several_keys(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    k2 = repo.add_key(b"second", KDF)
    be = LocalBackend(tmp_path / "r")
    assert Repository.open(be, b"second").key.raw == repo.key.raw
    assert {k["id"] for k in repo.list_keys()} == {repo.key_id, k2}
    with pytest.raises(InvalidArgument):
        repo.remove_key(repo.key_id)
    repo.remove_key(k2)
    with pytest.raises(WrongPassword):
        Repository.open(be, b"second")


def test_objects_are_verified_by_name_and_key(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    oid = repo.save_object("snapshot", b'{"x": 1}')
    assert repo.load_object("snapshot", oid) == b'{"x": 1}'
    path = tmp_path / "r" / "snapshots" / oid
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match="does not match its name"):
        repo.load_object("snapshot", oid)
    assert decode_object(encode_object(b"y" * 1000)) == b"y" * 1000
    assert encode_object(b"y" * 1000)[0] == 1 and encode_object(b"tiny")[0] == 0


def test_blobs_through_packs_index_and_recovery(tmp_path: Path) -> None:
    repo = _repo(tmp_path, pack_size=8192)
    packer = Packer(repo, index_every=2)
    blobs = [os.urandom(3000) for _ in range(10)]
    ids = []
    for b in blobs:
        enc = repo.encode_blob(BlobType.DATA, b)
        packer.add(enc)
        ids.append(enc.id)
    # Packs were uploaded along the way, and index batches written every 2 packs.
    assert packer.stats.packs >= 3 and packer.stats.indexes >= 1
    packer.flush()
    fresh = Repository.open(LocalBackend(tmp_path / "r"), b"pw")
    fresh.load_index()
    assert [fresh.read_blob(i) for i in ids] == blobs

    # A pack stored without an index (interrupted run) is found and indexed again.
    packer2 = Packer(repo, index_every=100)
    enc = repo.encode_blob(BlobType.DATA, os.urandom(9000))
    packer2.add(enc)  # fills a pack -> uploaded, but no index written
    other = Repository.open(LocalBackend(tmp_path / "r"), b"pw")
    other.load_index()
    assert enc.id not in other.index
    assert other.recover_unindexed_packs() == 1
    assert other.read_blob(enc.id) is not None
    third = Repository.open(LocalBackend(tmp_path / "r"), b"pw")
    third.load_index()
    assert enc.id in third.index  # the recovery wrote an index object


def test_packs_stay_within_pack_size(tmp_path: Path) -> None:
    """A blob that would take a pack past pack_size starts the next one (a pack is then one
    gateway stripe on orbit://); only a blob of pack_size or more makes a pack that large, alone."""
    repo = _repo(tmp_path, pack_size=8192)
    packer = Packer(repo)
    rng = random.Random(5)
    sizes = [rng.randrange(500, 5000) for _ in range(40)] + [9000, 300]
    for n in sizes:
        packer.add(repo.encode_blob(BlobType.DATA, os.urandom(n)))
    packer.flush()
    fresh = Repository.open(LocalBackend(tmp_path / "r"), b"pw")
    fresh.load_index()
    packs = list(fresh.index.packs().values())
    assert sum(len(p) for p in packs) == len(sizes)
    for entries in packs:
        assert len(entries) == 1 or sum(e.length for e in entries) <= 8192
    assert any(len(e) == 1 and e[0].length > 8192 for e in packs)
    assert len(packs) <= 2 * sum(sizes) // 8192 + 2  # and they are not needlessly small


class _CachingBackend(LocalBackend):
    """A local backend with the tree cache the orbit:// backend has, counting pack reads."""

    def __init__(self, root: Path, cache: Path) -> None:
        super().__init__(root)
        self.tree_cache = BlobCache(cache)
        self.pack_reads = 0

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.pack_reads += name.startswith("data/")
        return super().get(name, offset, length)


def test_written_trees_are_cached_for_the_next_reader(tmp_path: Path) -> None:
    _repo(tmp_path)
    be = _CachingBackend(tmp_path / "r", tmp_path / "cache")
    repo = Repository.open(be, b"pw")
    packer = Packer(repo)
    tree = repo.encode_blob(BlobType.TREE, b'{"nodes":[]}')
    data = repo.encode_blob(BlobType.DATA, os.urandom(5000))
    packer.add(tree)
    packer.add(data)
    packer.flush()
    reader = Repository.open(be, b"pw")
    reader.load_index()
    assert reader.read_blob(tree.id) == b'{"nodes":[]}'
    assert be.pack_reads == 0  # the tree came from the cache the backup filled
    reader.read_blob(data.id)
    assert be.pack_reads == 1  # data blobs are not cached
    # A damaged entry is caught by authenticated decryption and read from the pack again.
    path = next((tmp_path / "cache").rglob(tree.id.hex()))
    path.write_bytes(b"x" * len(path.read_bytes()))
    reader._tree_cache.clear()
    assert reader.read_blob(tree.id) == b'{"nodes":[]}'
    assert be.pack_reads == 2


def test_a_cold_cache_fetches_each_tree_pack_once(tmp_path: Path) -> None:
    """A restore on a new machine: the first tree read brings in every tree of its pack."""
    repo = _repo(tmp_path)
    packer = Packer(repo)
    trees = [repo.encode_blob(BlobType.TREE, b'{"nodes":[%d]}' % i) for i in range(20)]
    for t in trees:
        packer.add(t)
    packer.flush()
    be = _CachingBackend(tmp_path / "r", tmp_path / "new-machine-cache")
    reader = Repository.open(be, b"pw")
    reader.load_index()
    assert [reader.read_blob(t.id) for t in trees] == [b'{"nodes":[%d]}' % i for i in range(20)]
    assert be.pack_reads == 1  # one whole-pack read, then all from the cache


def test_prune_drops_cached_trees_it_removed(tmp_path: Path) -> None:
    from orbitvault.client.prune import execute_prune, plan_prune

    _repo(tmp_path)
    be = _CachingBackend(tmp_path / "r", tmp_path / "cache")
    repo = Repository.open(be, b"pw")
    packer = Packer(repo)
    packer.add(repo.encode_blob(BlobType.TREE, b'{"nodes":[]}'))
    packer.flush()
    assert len(list((tmp_path / "cache").rglob("*"))) == 2  # a fan-out directory and the entry
    (tmp_path / "cache" / "00").mkdir(exist_ok=True)
    (tmp_path / "cache" / "00" / ".tmp-x").write_bytes(b"")  # not an entry: left alone
    repo.load_index()
    plan = plan_prune(repo)  # no snapshot refers to the tree: its pack goes
    execute_prune(repo, plan)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == [".tmp-x"]


def test_locks_shared_exclusive_and_stale(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    a = repo.lock(exclusive=False)
    b = repo.lock(exclusive=False)  # shared locks coexist
    with pytest.raises(RepositoryLocked):
        repo.lock(exclusive=True)
    a.release()
    b.release()
    ex = repo.lock(exclusive=True)
    with pytest.raises(RepositoryLocked):
        repo.lock(exclusive=False)
    ex.release()
    assert repo.list_locks() == []

    now = datetime.now(UTC)
    assert lock_is_stale({"expires": (now - timedelta(seconds=1)).isoformat()})
    assert not lock_is_stale({"expires": (now + timedelta(hours=1)).isoformat(), "hostname": "elsewhere", "pid": 1})
    mine = {"expires": (now + timedelta(hours=1)).isoformat(), "hostname": os.uname().nodename, "pid": 2**22 + 7}
    assert lock_is_stale(mine)  # this host, no such process
    repo.save_object("lock", json.dumps({**mine, "exclusive": True}).encode())
    assert remove_locks(repo, all_locks=False) == 1


def test_lock_refresh_replaces_the_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBITVAULT_LOCK_LEASE", "60")
    repo = _repo(tmp_path)
    lk = repo.lock(exclusive=False)
    first = lk.lock_id
    lk.refresh()
    assert lk.lock_id != first and [d["id"] for d in repo.list_locks()] == [lk.lock_id]
    assert not lk.lost
    lk.release()
    assert not (tmp_path / "r" / object_name("locks", first or "")).exists()


class _SlowRemote(LocalBackend):
    """A store whose puts take a while, like the gateway's (k+1 synced commits per pack): the first
    puts wait (up to 5 s) until three are in flight at once."""

    concurrent_puts = 3

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.active = self.peak = 0
        self._lock = threading.Lock()
        self._three = threading.Event()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= 3:
                self._three.set()
        self._three.wait(5)
        super().put(name, data)
        with self._lock:
            self.active -= 1


def test_packs_upload_concurrently_to_a_remote_store(tmp_path: Path) -> None:
    _repo(tmp_path, pack_size=8192)
    be = _SlowRemote(tmp_path / "r")
    repo = Repository.open(be, b"pw")
    packer = Packer(repo, background=True, index_every=3)
    blobs = {}
    for _ in range(12):
        enc = repo.encode_blob(BlobType.DATA, os.urandom(9000))
        packer.add(enc)
        blobs[enc.id] = enc
    packer.flush()
    assert be.peak == 3  # three puts in flight, not one after the other
    assert packer.stats.packs == 12
    fresh = Repository.open(LocalBackend(tmp_path / "r"), b"pw")
    fresh.load_index()
    assert all(fresh.read_blob(i) for i in blobs)  # every pack stored and indexed
