"""`orbit://HOST:PORT/BUCKET`: a repository stored as objects in the gateway's ObjectStore.

Object names (FORMAT.md) are the object keys in the bucket, so the repository reads the same from
any client and through restic-compatible tooling. The gateway adds encryption at rest, erasure
coding and placement; the repository's own encryption means it only ever sees ciphertext.

Credentials come from the environment: `ORBITVAULT_API_KEY`, and either mTLS files
(`ORBITVAULT_TLS_CA`, `ORBITVAULT_TLS_CERT`, `ORBITVAULT_TLS_KEY`) or `ORBITVAULT_INSECURE=1` for a
plaintext local gateway. The SDK (and with it grpc) is imported only when such a repository is
opened: the rest of the client never touches the network stack.

Content-addressed metadata (keys, index, snapshots: each object's name is the blake3 of its
bytes) is cached on disk and verified against its name on every read, so a damaged or stale cache
entry is refetched, never trusted.

Cold objects: a gateway in scheduled mode keeps objects in orbit, reachable only in contact
windows. `cold_storage()` says whether the gateway is such a one, and `restore_objects(names)`
asks it to stage objects for reading (RestoreObject) and returns the ETA of the last one; a
restore calls it until nothing is pending (`orbitvault.client.cold`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from orbitvault.client.backend import OBJECT_TYPES, ObjectInfo, name_id, parse_orbit_url
from orbitvault.errors import AlreadyExists, InvalidArgument, NotFound

CACHED_KINDS = ("keys", "index", "snapshots")
_TRUE = {"1", "true", "yes", "on"}
RESTORE_KEEP_MS = 7 * 86_400_000  # how long the gateway keeps a restored copy readable


@dataclass(frozen=True, slots=True)
class RestoreEta:
    """One round of RestoreObject calls: what is not readable yet, and when the last one will be.

    Times are the gateway's clock (simulated time when `simulated`): an ETA only means something
    next to `now_unix_ms`.
    """

    requested: int
    pending: tuple[str, ...]
    eta_unix_ms: int  # 0 when nothing is pending
    eta_bound_unix_ms: int  # lower bound for the ETA from window capacity (0: unknown)
    now_unix_ms: int
    simulated: bool
    ready_unix_ms: int = 0  # when the last of the ready ones became ready (0: unknown)
    cold: int | None = None  # how many were not readable when asked (None: len(pending))

    @property
    def staged(self) -> int:
        """Objects this call found only in orbit, whether or not they became readable since."""
        return len(self.pending) if self.cold is None else self.cold

    @property
    def ready(self) -> bool:
        return not self.pending


@dataclass(frozen=True, slots=True)
class OrbitCredentials:
    """How to reach a gateway: an API key and mTLS files, or explicit plaintext."""

    api_key: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrbitCredentials:
        env = os.environ if env is None else env
        api_key = env.get("ORBITVAULT_API_KEY", "")
        if not api_key:
            raise InvalidArgument("an orbit:// repository needs an API key: set ORBITVAULT_API_KEY")
        files = [env.get(f"ORBITVAULT_TLS_{part}") for part in ("CA", "CERT", "KEY")]
        insecure = env.get("ORBITVAULT_INSECURE", "").lower() in _TRUE
        if not insecure and not all(files):
            raise InvalidArgument(
                "an orbit:// repository needs mTLS files (ORBITVAULT_TLS_CA, ORBITVAULT_TLS_CERT, "
                "ORBITVAULT_TLS_KEY) or ORBITVAULT_INSECURE=1 for a plaintext local gateway"
            )
        ca, cert, key = (Path(f) if f else None for f in files)
        return cls(api_key, ca, cert, key, insecure)


class OrbitBackend:
    """The `Backend` protocol over the gateway SDK."""

    # Packs in flight at once (repository.Packer): a put returns only when k+1 shards of every
    # stripe are synced on distinct nodes, so one at a time leaves the gateway and nodes idle.
    concurrent_puts = 2

    def __init__(
        self,
        url: str,
        credentials: OrbitCredentials | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        client: Any = None,
    ) -> None:
        loc = parse_orbit_url(url)
        self.url = url
        self.bucket = loc.bucket
        if client is None:
            from orbitvault.client.sdk import ObjectStoreClient, TlsFiles

            creds = credentials or OrbitCredentials.from_env()
            tls = TlsFiles(creds.ca, creds.cert, creds.key) if creds.ca and creds.cert and creds.key else None
            client = ObjectStoreClient(f"{loc.host}:{loc.port}", creds.api_key, tls=tls, insecure=creds.insecure)
        self._client = client
        self._cache = Path(cache_dir) / _cache_name(url) if cache_dir is not None else None
        # Sealed tree blobs, read by every backup (parent trees), restore and check: one gRPC call
        # each otherwise. Entries need no checksum: the blob's AEAD (its id in the AAD) rejects any
        # damaged or substituted entry, and the repository then fetches it again.
        self.tree_cache = BlobCache(self._cache / "trees") if self._cache is not None else None

    # --- Backend ----------------------------------------------------------------------------------

    def create(self) -> None:
        with contextlib.suppress(AlreadyExists):
            self._client.create_bucket(self.bucket)
        if self.exists("config"):
            raise AlreadyExists(f"a repository already exists at {self.url}")

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._client.put(self.bucket, name, data)  # sent 1 MiB at a time: no copy of a whole pack
        self._cache_store(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        whole = offset == 0 and length is None
        if whole:
            cached = self._cache_load(name)
            if cached is not None:
                return cached
        data = self._client.get(self.bucket, name, offset=offset, length=length)
        if whole:
            self._cache_store(name, data)
        return data

    def stat(self, name: str) -> ObjectInfo:
        return ObjectInfo(name, self._client.head(self.bucket, name).size)

    def exists(self, name: str) -> bool:
        try:
            self._client.head(self.bucket, name)
        except NotFound:
            return False
        return True

    def list(self, kind: str) -> Iterator[ObjectInfo]:
        if kind not in OBJECT_TYPES:
            raise InvalidArgument(f"unknown object type {kind!r}")
        for info in self._client.list(self.bucket, prefix=f"{kind}/"):
            yield ObjectInfo(info.key, info.size)

    def delete(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._client.delete(self.bucket, name)
        if (path := self._cache_path(name)) is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        self._client.close()

    def durability(self, name: str) -> Any:
        """The gateway's orbit durability of one object (the SDK's ObjectStatus)."""
        return self._client.status(self.bucket, name)

    # --- cold objects -----------------------------------------------------------------------------

    def cold_storage(self) -> bool:
        """Whether the gateway keeps objects in orbit on a contact schedule (scheduled mode), so
        reads may need `restore_objects` first; a direct-mode gateway reads nodes at once."""
        return self._client.gateway_status().mode == "scheduled"

    def cached(self, name: str) -> bool:
        """The object is in the local metadata cache (and intact): reading it needs no gateway."""
        return self._cache_load(name) is not None

    def restore_objects(self, names: Iterable[str], *, keep_for_ms: int = RESTORE_KEEP_MS) -> RestoreEta:
        """RestoreObject each name (idempotent: a restore under way is only reported) and return
        which are still pending and the ETA of the last one, on the gateway's clock.

        The gateway plans all restores in progress together, so a new request can move the ones
        asked before it: once several are pending, their ETAs are read again from the plan that
        holds them all (asking again does not re-plan), or the ETA could be a pass early. On a
        fast simulated clock some may have become readable in between: they still count as
        staged, and the ETA is when the last of them all is (or was) readable."""
        status = self._client.gateway_status()
        names = list(names)
        pending, eta, bound, ready = self._restore_round(names, keep_for_ms)
        cold = len(pending)
        if cold > 1:
            again, eta_again, bound_again, done_at = self._restore_round(pending, keep_for_ms)
            if len(again) < cold:  # some were restored meanwhile, at `done_at`
                eta = max(eta_again, done_at)
                bound = bound_again if again else min(bound, eta)
            else:
                eta, bound = eta_again, bound_again
            pending, ready = again, max(ready, done_at)
        return RestoreEta(
            len(names), tuple(pending), eta, bound, status.gateway_time_unix_ms, status.simulated_clock, ready, cold
        )

    def _restore_round(self, names: list[str], keep_for_ms: int) -> tuple[list[str], int, int, int]:
        pending: list[str] = []
        eta = bound = ready = 0
        for name in names:
            st = self._client.restore(self.bucket, name, keep_for_ms=keep_for_ms)
            if not st.ready:
                pending.append(name)
                eta = max(eta, st.eta_unix_ms)
                bound = max(bound, st.eta_bound_unix_ms)
            elif st.expires_unix_ms:
                # A restored copy is kept `keep_for_ms` from the moment it became readable: that
                # moment, exact even when this poll comes a few passes later on a fast clock.
                ready = max(ready, st.expires_unix_ms - keep_for_ms)
        return pending, eta, bound, ready

    # --- cache ------------------------------------------------------------------------------------

    def _cache_path(self, name: str) -> Path | None:
        kind = name.split("/", 1)[0]
        if self._cache is None or kind not in CACHED_KINDS:
            return None
        return self._cache / kind / name_id(name)

    def _cache_load(self, name: str) -> bytes | None:
        path = self._cache_path(name)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if blake3.blake3(data).hexdigest() != name_id(name):
            return None  # damaged or not ours: fetch again
        return data

    def _cache_store(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._cache_path(name)
        if path is not None and blake3.blake3(data).hexdigest() == name_id(name):
            _write_cache_file(path, data)


def _cache_name(url: str) -> str:
    return blake3.blake3(url.encode()).hexdigest()[:32]


class BlobCache:
    """Sealed blobs on disk by id; a cache that cannot be written is only slower, never wrong."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, blob_id: bytes) -> Path:
        h = blob_id.hex()
        return self.root / h[:2] / h

    def get(self, blob_id: bytes) -> bytes | None:
        try:
            return self._path(blob_id).read_bytes()
        except OSError:
            return None

    def retain(self, keep: Callable[[bytes], bool]) -> int:
        """Delete the entries whose blob `keep` rejects (prune: blobs no longer indexed); returns
        how many went. Entries are small, but without this the cache only ever grows."""
        gone = 0
        for path in self.root.glob("??/*"):
            try:
                blob_id = bytes.fromhex(path.name)
            except ValueError:
                continue  # a temporary file or something not ours
            if not keep(blob_id):
                with contextlib.suppress(OSError):
                    path.unlink()
                    gone += 1
        return gone

    def put(self, blob_id: bytes, sealed: bytes) -> None:
        _write_cache_file(self._path(blob_id), sealed)


def _write_cache_file(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Temp file + rename, so readers never see half an entry; a cache that cannot be written is
    only slower, never wrong."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        return
