"""A repository: config, keys, sealed objects, blobs through packs and the index, locks.

This is the one place that knows how FORMAT.md's objects are named, sealed and parsed; the
commands (archiver, restorer, check, forget, prune) work on `Repository` methods.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag

from orbitvault import __version__
from orbitvault.client.backend import CONFIG, Backend, ObjectInfo, name_id, object_name
from orbitvault.client.chunker import Chunker, ChunkerParams
from orbitvault.client.crypto import (
    KdfParams,
    MasterKey,
    derive_password_key,
    object_aad,
    object_id,
    unwrap,
    wrap,
)
from orbitvault.client.errors import CorruptObject, InvalidFormat, RepositoryLocked, RepositoryNotFound, WrongPassword
from orbitvault.client.index import Index, decode_index, encode_index
from orbitvault.client.pack import BlobCodec, BlobType, EncodedBlob, PackEntry, PackWriter, read_header
from orbitvault.client.snapshot import Snapshot
from orbitvault.client.tree import Node, decode_tree
from orbitvault.errors import InvalidArgument, NotFound, OrbitVaultError

FORMAT_VERSION = 1
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
KEY_AAD = b"ov-key-v1"
DEFAULT_LOCK_LEASE_S = 300.0
_OBJ_RAW = 0
_OBJ_ZSTD = 1
_MAX_OBJECT = 1 << 31
_SPARE_BUFFERS = 4  # pack buffers kept for reuse: the uploader queue (2) + one filling per blob type


def lock_lease_seconds() -> float:
    """Lock lease; ORBITVAULT_LOCK_LEASE (seconds) overrides it (tests, slow links)."""
    v = os.environ.get("ORBITVAULT_LOCK_LEASE")
    if v:
        try:
            lease = float(v)
        except ValueError:
            raise InvalidArgument(f"ORBITVAULT_LOCK_LEASE must be a number of seconds, got {v!r}") from None
        if lease <= 0:
            raise InvalidArgument("ORBITVAULT_LOCK_LEASE must be positive")
        return lease
    return DEFAULT_LOCK_LEASE_S


def now_local() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True, slots=True)
class Config:
    version: int
    id: str
    chunker: ChunkerParams
    compression_level: int
    pack_size: int
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "chunker": self.chunker.to_json(),
            "compression": {"algorithm": "zstd", "level": self.compression_level},
            "pack_size": self.pack_size,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: Any) -> Config:
        try:
            version = int(d["version"])
            if version != FORMAT_VERSION:
                raise InvalidFormat(f"repository format version {version} is not supported (this client reads 1)")
            comp = d["compression"]
            if comp.get("algorithm") != "zstd":
                raise InvalidFormat(f"unknown compression {comp.get('algorithm')!r}")
            cfg = cls(
                version=version,
                id=str(d["id"]),
                chunker=ChunkerParams.from_json(d["chunker"]),
                compression_level=int(comp["level"]),
                pack_size=int(d["pack_size"]),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidFormat(f"malformed repository config: {e}") from None
        if not 4096 <= cfg.pack_size <= 1 << 30:
            raise InvalidFormat(f"pack size {cfg.pack_size} out of range")
        return cfg


def encode_object(payload: bytes, *, compress: bool = True) -> bytes:
    """Object plaintext: one flag byte (0 raw, 1 zstd) then the payload."""
    if compress and len(payload) >= 256:
        c = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(payload)
        if len(c) < len(payload):
            return bytes((_OBJ_ZSTD,)) + c
    return bytes((_OBJ_RAW,)) + payload


def decode_object(plaintext: bytes) -> bytes:
    if not plaintext:
        raise CorruptObject("empty object")
    flag = plaintext[0]
    if flag == _OBJ_RAW:
        return plaintext[1:]
    if flag == _OBJ_ZSTD:
        try:
            return zstandard.ZstdDecompressor().decompress(plaintext[1:], max_output_size=_MAX_OBJECT)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"bad zstd frame in object: {e}") from None
    raise CorruptObject(f"unknown object encoding flag {flag}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class Repository:
    """An open repository (the master key is known)."""

    def __init__(self, backend: Backend, key: MasterKey, config: Config, key_id: str, kdf: KdfParams) -> None:
        self.backend = backend
        self.key = key
        self.config = config
        self.key_id = key_id
        self.kdf = kdf
        self.codec = BlobCodec(key, config.compression_level)
        self.chunker = Chunker(config.chunker)
        self.index = Index()
        self._tree_cache: OrderedDict[bytes, list[Node]] = OrderedDict()
        self._tree_cache_lock = threading.Lock()

    # --- creation and opening ----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        chunker: ChunkerParams | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
        kdf: KdfParams | None = None,
    ) -> Repository:
        if backend.exists(CONFIG):
            raise InvalidArgument(f"a repository already exists at {backend.url}")
        if chunker is None:
            chunker = ChunkerParams(seed=(int.from_bytes(os.urandom(8), "little") >> 1) | 1)
        chunker.validate()
        kdf = kdf or KdfParams()
        config = Config(
            version=FORMAT_VERSION,
            id=os.urandom(32).hex(),
            chunker=chunker,
            compression_level=compression_level,
            pack_size=pack_size,
            created=now_local().isoformat(),
        )
        Config.from_json(config.to_json())  # validates
        key = MasterKey.generate()
        backend.create()
        repo = cls(backend, key, config, "", kdf)
        repo.key_id = repo.add_key(password, kdf)
        # config last: its presence is what makes the location a repository.
        sealed = key.seal(encode_object(json.dumps(config.to_json()).encode()), object_aad("config"))
        backend.put(CONFIG, sealed)
        return repo

    @classmethod
    def open(cls, backend: Backend, password: bytes, *, key_hint: str | None = None) -> Repository:
        try:
            sealed_config = backend.get(CONFIG)
        except NotFound:
            raise RepositoryNotFound(f"no repository at {backend.url} (run `orbitvault init` first)") from None
        infos = sorted(
            backend.list("keys"), key=lambda i: (not (key_hint and name_id(i.name).startswith(key_hint)), i.name)
        )
        if not infos:
            raise CorruptObject(f"repository at {backend.url} has no key files")
        for info in infos:
            try:
                doc = json.loads(backend.get(info.name))
                kdf = KdfParams(int(doc["time_cost"]), int(doc["memory_kib"]), int(doc["parallelism"]))
                if doc.get("kdf") != "argon2id":
                    continue
                salt = base64.b64decode(doc["salt"])
                data = base64.b64decode(doc["data"])
            except (NotFound, ValueError, KeyError, TypeError):
                continue
            try:
                raw = unwrap(derive_password_key(password, salt, kdf), data, KEY_AAD)
            except InvalidTag:
                continue
            key = MasterKey(raw)
            try:
                config = Config.from_json(json.loads(decode_object(key.open(sealed_config, object_aad("config")))))
            except CorruptObject:
                raise CorruptObject("a key opened but the config does not authenticate under it") from None
            return cls(backend, key, config, name_id(info.name), kdf)
        raise WrongPassword("wrong password or no key found")

    # --- keys ----------------------------------------------------------------------------------

    def add_key(self, password: bytes, kdf: KdfParams | None = None) -> str:
        kdf = kdf or self.kdf
        salt = os.urandom(16)
        data = wrap(derive_password_key(password, salt, kdf), self.key.raw, KEY_AAD)
        doc = {
            "version": 1,
            "created": now_local().isoformat(),
            "username": _user(),
            "hostname": socket.gethostname(),
            "kdf": "argon2id",
            "time_cost": kdf.time_cost,
            "memory_kib": kdf.memory_kib,
            "parallelism": kdf.parallelism,
            "salt": base64.b64encode(salt).decode(),
            "data": base64.b64encode(data).decode(),
        }
        body = json.dumps(doc, indent=2).encode()
        key_id = object_id(body).hex()
        self.backend.put(object_name("keys", key_id), body)
        return key_id

    def list_keys(self) -> list[dict[str, Any]]:
        out = []
        for info in self.backend.list("keys"):
            kid = name_id(info.name)
            try:
                doc = json.loads(self.backend.get(info.name))
            except (NotFound, ValueError):
                continue
            out.append(
                {
                    "id": kid,
                    "current": kid == self.key_id,
                    "username": doc.get("username", ""),
                    "hostname": doc.get("hostname", ""),
                    "created": doc.get("created", ""),
                }
            )
        return sorted(out, key=lambda d: d["created"])

    def remove_key(self, key_id: str) -> None:
        if key_id == self.key_id:
            raise InvalidArgument("refusing to remove the key currently in use")
        self.backend.delete(object_name("keys", key_id))

    # --- objects -------------------------------------------------------------------------------

    def save_object(self, kind: str, payload: bytes) -> str:
        """Seal and store an index/snapshot/lock object; returns its id (hex)."""
        sealed = self.key.seal(encode_object(payload), object_aad(kind))
        oid = object_id(sealed).hex()
        self.backend.put(object_name(_dir(kind), oid), sealed)
        return oid

    def load_object(self, kind: str, oid: str) -> bytes:
        name = object_name(_dir(kind), oid)
        sealed = self.backend.get(name)
        if object_id(sealed).hex() != oid:
            raise CorruptObject(f"{name}: content does not match its name (damaged)")
        try:
            return decode_object(self.key.open(sealed, object_aad(kind)))
        except CorruptObject as e:
            raise CorruptObject(f"{name}: {e}") from None

    def load_config_json(self) -> dict[str, Any]:
        return self.config.to_json()

    def list_ids(self, kind: str) -> list[str]:
        return sorted(name_id(i.name) for i in self.backend.list(_dir(kind)))

    def resolve_id(self, kind: str, prefix: str) -> str:
        prefix = prefix.lower()
        matches = [i for i in self.list_ids(kind) if i.startswith(prefix)]
        if not matches:
            raise NotFound(f"no {kind} object matches {prefix!r}")
        if len(matches) > 1:
            raise InvalidArgument(f"{kind} prefix {prefix!r} is ambiguous")
        return matches[0]

    # --- snapshots -----------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        if not snap.program_version:
            snap.program_version = f"orbitvault {__version__}"
        snap.id = self.save_object("snapshot", json.dumps(snap.to_json()).encode())
        return snap.id

    def load_snapshot(self, sid: str) -> Snapshot:
        return Snapshot.from_json(json.loads(self.load_object("snapshot", sid)), sid)

    def load_snapshots(self, on_error: Callable[[str, Exception], None] | None = None) -> list[Snapshot]:
        ids = self.list_ids("snapshot")
        out = []
        for sid, res in zip(ids, _parallel(self.load_snapshot, ids), strict=True):
            if isinstance(res, Exception):
                if isinstance(res, NotFound):
                    continue  # removed concurrently
                if on_error is None:
                    raise res
                on_error(sid, res)
                continue
            out.append(res)
        return sorted(out, key=lambda s: s.time)

    def delete_snapshot(self, sid: str) -> None:
        self.backend.delete(object_name("snapshots", sid))

    # --- index ---------------------------------------------------------------------------------

    def load_index(self, on_error: Callable[[str, Exception], None] | None = None) -> Index:
        ids = [i for i in self.list_ids("index") if i not in self.index.loaded_ids]

        def load(iid: str) -> tuple[dict[bytes, list[PackEntry]], list[bytes]]:
            return decode_index(self.load_object("index", iid))

        for iid, res in zip(ids, _parallel(load, ids), strict=True):
            if isinstance(res, Exception):
                if isinstance(res, NotFound):
                    continue
                if on_error is None:
                    raise res
                on_error(iid, res)
                continue
            self.index.add_index(iid, res[0], res[1])
        return self.index

    def save_index(self, packs: dict[bytes, list[PackEntry]], supersedes: list[bytes] | None = None) -> str:
        iid = self.save_object("index", encode_index(packs, supersedes or []))
        self.index.loaded_ids.add(iid)
        return iid

    def unindexed_packs(self) -> list[ObjectInfo]:
        return [i for i in self.backend.list("data") if not self.index.has_pack(bytes.fromhex(name_id(i.name)))]

    def recover_unindexed_packs(self, infos: list[ObjectInfo] | None = None) -> int:
        """Index packs stored without an index (an interrupted backup): their blobs are reused.

        One ranged read per pack (its header). Damaged packs are left alone for check/prune.
        """
        infos = self.unindexed_packs() if infos is None else infos
        recovered: dict[bytes, list[PackEntry]] = {}

        def header(info: ObjectInfo) -> list[PackEntry]:
            return read_header(self.backend, self.key, info.name, info.size)

        for info, res in zip(infos, _parallel(header, infos), strict=True):
            if isinstance(res, Exception):
                continue
            pid = bytes.fromhex(name_id(info.name))
            recovered[pid] = res
            self.index.add_pack(pid, res)
        if recovered:
            self.save_index(recovered)
        return len(recovered)

    # --- blobs ---------------------------------------------------------------------------------

    def pack_name(self, pack_id: bytes) -> str:
        return object_name("data", pack_id.hex())

    def read_blob(self, blob_id: bytes) -> bytes:
        loc = self.index.lookup(blob_id)
        if loc is None:
            raise NotFound(f"blob {blob_id.hex()} is not in the index")
        pack_id, entry = loc
        cache = getattr(self.backend, "tree_cache", None) if entry.type is BlobType.TREE else None
        if cache is not None:
            if (cached := cache.get(blob_id)) is not None:
                with contextlib.suppress(CorruptObject):  # a damaged entry: its pack is read again
                    return self.codec.decode(entry, cached)
            if (sealed := self._cache_tree_pack(pack_id, entry, cache)) is not None:
                with contextlib.suppress(CorruptObject):  # one read for all its trees, not one per tree
                    return self.codec.decode(entry, sealed)
        sealed = self.backend.get(self.pack_name(pack_id), entry.offset, entry.length)
        if len(sealed) != entry.length:
            raise CorruptObject(f"pack {pack_id.hex()}: short read of blob {blob_id.hex()}")
        try:
            data = self.codec.decode(entry, sealed)
        except CorruptObject as e:
            raise CorruptObject(f"pack {pack_id.hex()}: {e}") from None
        if cache is not None:
            cache.put(blob_id, sealed)
        return data

    def _cache_tree_pack(self, pack_id: bytes, want: PackEntry, cache: Any) -> bytes | None:
        """Put every tree of a pack into the tree cache, from one read of the whole pack; returns
        the sealed bytes of `want` (None if the pack could not be read whole).

        On a new machine (a disaster-recovery restore) the cache is empty and every tree would be a
        round trip to the gateway; tree packs hold only trees, so reading one whole costs little more
        than a single tree. Entries are authenticated when used, so nothing here is trusted yet.
        """
        try:
            pack = memoryview(self.backend.get(self.pack_name(pack_id)))
        except OrbitVaultError:
            return None  # read the one blob instead; its error, if any, is reported there
        found = None
        for e in self.index.pack_entries(pack_id):
            if e.type is BlobType.TREE and e.offset + e.length <= len(pack):
                sealed = bytes(pack[e.offset : e.offset + e.length])
                cache.put(e.id, sealed)
                if e == want:
                    found = sealed
        return found

    def load_tree(self, tree_id: bytes) -> list[Node]:
        with self._tree_cache_lock:
            hit = self._tree_cache.get(tree_id)
            if hit is not None:
                self._tree_cache.move_to_end(tree_id)
                return hit
        nodes = decode_tree(self.read_blob(tree_id))
        with self._tree_cache_lock:
            self._tree_cache[tree_id] = nodes
            if len(self._tree_cache) > 512:
                self._tree_cache.popitem(last=False)
        return nodes

    def encode_blob(self, blob_type: BlobType, data: bytes | memoryview, blob_id: bytes | None = None) -> EncodedBlob:
        return self.codec.encode(blob_type, data, blob_id)

    # --- locks ---------------------------------------------------------------------------------

    def lock(self, *, exclusive: bool, retry_for: float = 0.0) -> RepoLock:
        lk = RepoLock(self, exclusive=exclusive)
        lk.acquire(retry_for)
        return lk

    def list_locks(self) -> list[dict[str, Any]]:
        out = []
        for lid in self.list_ids("lock"):
            try:
                d = json.loads(self.load_object("lock", lid))
            except NotFound:
                continue
            except OrbitVaultError:
                d = {"unreadable": True}
            d["id"] = lid
            out.append(d)
        return out


def _dir(kind: str) -> str:
    return {"snapshot": "snapshots", "index": "index", "lock": "locks", "key": "keys", "data": "data"}[kind]


def _parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 4) -> Iterator[Any]:
    """fn over items with a few threads (backend latency), results in order, exceptions as values."""

    def safe(x: Any) -> Any:
        try:
            return fn(x)
        except Exception as e:  # returned, the caller decides
            return e

    if len(items) <= 1:
        yield from (safe(x) for x in items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(safe, items)


# --- locks ---------------------------------------------------------------------------------------


def lock_is_stale(d: dict[str, Any], now: datetime | None = None) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    if d.get("unreadable"):
        return False
    now = now or datetime.now(UTC)
    try:
        expires = datetime.fromisoformat(d["expires"])
    except (KeyError, ValueError, TypeError):
        return True
    if expires <= now:
        return True
    if d.get("hostname") == socket.gethostname() and isinstance(d.get("pid"), int):
        try:
            os.kill(d["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


class RepoLock:
    """A lease in `locks/`: shared (backup, restore, check, forget, ...) or exclusive (prune).

    A lock object records its expiry; the holder writes a fresh one every lease/3 and deletes the
    old, so a crashed holder's lock simply expires. A holder that could not refresh within its
    lease marks itself `lost`, and long operations check that before they commit anything.
    """

    def __init__(self, repo: Repository, *, exclusive: bool) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.lease = lock_lease_seconds()
        self.lock_id: str | None = None
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _doc(self) -> bytes:
        now = datetime.now(UTC)
        return json.dumps(
            {
                "time": now.isoformat(),
                "expires": (now + timedelta(seconds=self.lease)).isoformat(),
                "exclusive": self.exclusive,
                "hostname": socket.gethostname(),
                "username": _user(),
                "pid": os.getpid(),
                "uid": os.getuid(),
                "gid": os.getgid(),
                "nonce": os.urandom(8).hex(),
            }
        ).encode()

    def acquire(self, retry_for: float = 0.0) -> None:
        deadline = time.monotonic() + retry_for
        while True:
            self.lock_id = self.repo.save_object("lock", self._doc())
            self._renewed_at = time.monotonic()
            conflict = self._conflict()
            if conflict is None:
                break
            self.repo.backend.delete(object_name("locks", self.lock_id))
            self.lock_id = None
            if time.monotonic() >= deadline:
                kind = "exclusive" if conflict.get("exclusive") else "shared"
                raise RepositoryLocked(
                    f"repository is already locked ({kind}) by PID {conflict.get('pid')} on "
                    f"{conflict.get('hostname')} by {conflict.get('username')} since {conflict.get('time')} "
                    f"(lock {conflict['id'][:8]}, expires {conflict.get('expires')}); "
                    "`orbitvault unlock` removes stale locks"
                )
            time.sleep(min(5.0, max(0.2, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._refresher, name="lock-refresh", daemon=True)
        self._thread.start()

    def _conflict(self) -> dict[str, Any] | None:
        for d in self.repo.list_locks():
            if d["id"] == self.lock_id or lock_is_stale(d):
                continue
            if self.exclusive or d.get("exclusive") or d.get("unreadable"):
                return d
        return None

    def _refresher(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with contextlib.suppress(Exception):  # retried at the next tick; `lost` tells the holder
                self.refresh()

    def refresh(self) -> None:
        with self._mutex:
            if self.lock_id is None:
                return
            old = self.lock_id
            self.lock_id = self.repo.save_object("lock", self._doc())
            self._renewed_at = time.monotonic()
            self.repo.backend.delete(object_name("locks", old))

    @property
    def lost(self) -> bool:
        return self.lock_id is not None and time.monotonic() - self._renewed_at > self.lease

    def check(self) -> None:
        if self.lost:
            raise RepositoryLocked("lost the repository lock (could not refresh it within its lease); aborting")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._mutex:
            if self.lock_id is not None:
                with contextlib.suppress(OrbitVaultError, OSError):
                    self.repo.backend.delete(object_name("locks", self.lock_id))
                self.lock_id = None

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(repo: Repository, *, all_locks: bool) -> int:
    removed = 0
    for d in repo.list_locks():
        if all_locks or lock_is_stale(d):
            repo.backend.delete(object_name("locks", d["id"]))
            removed += 1
    return removed


# --- packing -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PackerStats:
    packs: int = 0
    blobs: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    indexes: int = 0


class Packer:
    """Groups blobs into packs (data and trees apart), uploads full packs, writes index batches.

    Thread-safe: any thread may `add`; filling a pack is a memcpy under a lock. With
    `background=True` full packs go to one uploader thread through a queue of two (back-pressure
    bounds memory to ~3 packs), so producers never wait for the network or fsync.

    A pack enters the in-memory index only once it is stored, and an index object is written
    every `index_every` packs, so an interrupted run loses at most the blobs still in memory;
    packs stored without an index are recovered by the next backup.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        dry_run: bool = False,
        limit_upload_kib: int | None = None,
        index_every: int = 32,
        pack_size: int | None = None,
        background: bool = False,
    ) -> None:
        self.repo = repo
        self.dry_run = dry_run
        self.pack_size = pack_size or repo.config.pack_size
        self.index_every = index_every
        self.limit = limit_upload_kib * 1024 if limit_upload_kib else None
        self.writers: dict[BlobType, PackWriter] = {}
        self.pending: dict[bytes, list[PackEntry]] = {}
        self.stats = PackerStats()
        self.pack_ids: list[str] = []
        self.error: BaseException | None = None
        self._t0 = time.monotonic()
        self._sent = 0
        self._lock = threading.Lock()
        self._uploads: queue.Queue[tuple[bytes, memoryview, list[PackEntry]] | None] | None = None
        self._spare: list[bytearray] = []  # buffers of stored packs, for the next packs to fill
        self._threads: list[threading.Thread] = []
        if background:
            # A remote store answers a put only after its own pipeline (the gateway: erasure
            # coding, k+1 synced node commits): several puts in flight keep that pipeline full.
            # One finished pack waits for an uploader (more only held 16 MiB each: 2 vs 1
            # measured the same at 1 GiB, 349-360 vs 341-352 MiB peak RSS).
            n = max(1, int(getattr(repo.backend, "concurrent_puts", 1)))
            self._uploads = queue.Queue(maxsize=1)
            for i in range(n):
                t = threading.Thread(target=self._uploader, name=f"uploader-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def add(self, blob: EncodedBlob) -> None:
        with self._lock:
            w, full = self._writer_for(blob.type, len(blob.sealed))
            w.add(blob)
            st = self.stats
            st.blobs += 1
            if blob.type == BlobType.DATA:
                st.data_blobs += 1
            else:
                st.tree_blobs += 1
            st.bytes_raw += blob.raw_length
            st.bytes_stored += len(blob.sealed)
            alone = self._take(blob.type) if w.size >= self.pack_size else None
        if blob.type is BlobType.TREE:
            self._cache_tree(blob.id, blob.sealed)
        self._dispatch_all(full, alone)

    def _cache_tree(self, blob_id: bytes, sealed: bytes | memoryview) -> None:
        """Write-through to the backend's tree cache: the next backup (parent trees), restore or
        check of this snapshot reads its trees locally. An entry whose pack never gets stored is
        harmless: reads go through the index first, and the entry is valid for its id anywhere."""
        cache = getattr(self.repo.backend, "tree_cache", None)
        if cache is not None and not self.dry_run:
            cache.put(blob_id, bytes(sealed))

    def add_sealed(self, entry: PackEntry, sealed: bytes | memoryview) -> None:
        with self._lock:
            w, full = self._writer_for(entry.type, len(sealed))
            w.add_sealed(entry, sealed)
            self.stats.blobs += 1
            self.stats.bytes_stored += len(sealed)
            alone = self._take(entry.type) if w.size >= self.pack_size else None
        if entry.type is BlobType.TREE:
            self._cache_tree(entry.id, sealed)
        self._dispatch_all(full, alone)

    def _writer_for(self, blob_type: BlobType, n: int) -> tuple[PackWriter, PackWriter | None]:
        """Under the lock: the writer for a blob of `n` bytes, and the pack to store first when the
        blob would take it past `pack_size`. Packs stay within `pack_size` plus their header (only
        a blob of that size or more makes a larger pack, alone), so on `orbit://` a pack is one
        gateway stripe rather than a full stripe and a sliver."""
        w = self.writers.get(blob_type)
        full = None
        if w is not None and w.size and w.size + n > self.pack_size:
            full, w = self._take(blob_type), None
        if w is None:
            w = self.writers[blob_type] = self._writer()
        return w, full

    def _dispatch_all(self, *packs: PackWriter | None) -> None:
        for w in packs:
            if w is not None:
                self._dispatch(w)

    def _writer(self) -> PackWriter:
        """Under the lock: a pack writer, on a spare buffer when there is one."""
        return PackWriter(self.repo.key, self._spare.pop() if self._spare else None)

    def _take(self, blob_type: BlobType) -> PackWriter:
        return self.writers.pop(blob_type)

    def _dispatch(self, w: PackWriter) -> None:
        if self.error is not None:
            raise self.error
        pack = w.finish()
        if self._uploads is None:
            self._store(*pack)
            return
        while True:
            try:
                self._uploads.put(pack, timeout=0.5)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def _uploader(self) -> None:
        assert self._uploads is not None
        while True:
            item = self._uploads.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain, so producers never block
            try:
                self._store(*item)
            except BaseException as e:
                self.error = e

    def _store(self, pack_id: bytes, data: memoryview, entries: list[PackEntry]) -> None:
        if not self.dry_run:
            self._throttle(len(data))
            self.repo.backend.put(self.repo.pack_name(pack_id), data)
        buf = data.obj
        data.release()  # stored: the buffer may be written over (and grown) by a later pack
        with self._lock:
            if len(self._spare) < _SPARE_BUFFERS:
                self._spare.append(buf)  # type: ignore[arg-type]
            self.repo.index.add_pack(pack_id, entries)
            self.pending[pack_id] = entries
            self.pack_ids.append(pack_id.hex())
            self.stats.packs += 1
            due = len(self.pending) >= self.index_every
        if due:
            self.write_index()

    def _throttle(self, n: int) -> None:
        if not self.limit:
            return
        self._sent += n
        ahead = self._sent / self.limit - (time.monotonic() - self._t0)
        if ahead > 0:
            time.sleep(ahead)

    def write_index(self) -> None:
        with self._lock:
            pending, self.pending = self.pending, {}
        if pending and not self.dry_run:
            self.repo.save_index(pending)
            self.stats.indexes += 1

    def flush(self) -> None:
        """Store every partial pack, wait for the uploads, write the remaining index."""
        with self._lock:
            partial = [self._take(t) for t in list(self.writers) if len(self.writers[t])]
        for w in partial:
            self._dispatch(w)
        self.close()
        if self.error is not None:
            raise self.error
        self.write_index()

    def close(self) -> None:
        """Stop the uploader threads (after the packs already queued)."""
        if self._threads and self._uploads is not None:
            for _t in self._threads:
                self._uploads.put(None)
            for t in self._threads:
                t.join()
            self._threads = []
