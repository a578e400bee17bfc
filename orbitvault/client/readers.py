"""Reader processes: directories are scanned (stat'ed, small files read, hashed, compressed and
sealed) outside the walking process.

Why processes: per small file a backup makes half a dozen system calls and some Python; in one
process that work and the walk share one GIL, and a thread that waits on a system call waits
again for the GIL afterwards, so a second thread never made a first backup faster (measured,
BENCHMARKS.md). A reader process has its own interpreter: the walk, the readers and the pool
threads (large files) use both cores.

The walking process asks for directories ahead of the walk: a directory is requested as soon as
its parent's scan is complete (by the result thread that receives it, not when the walk gets
there: otherwise each reader ran dry for ~1 s of a 1 GiB backup, at every end of a subtree), and
requests leave in the walk's own order (depth first, names in byte order), so the scan the walk
needs next is usually done. Dedupe stays exact: a reader seals
each content once, and the walking process claims every blob id before packing it (a reader's
seal of a blob that is already stored is dropped there).

Protocol, over the reader's stdin and stdout, in frames (`pipes.py`):

- main -> reader: the setup (raw master key, chunker parameters, zstd level, largest file it
  reads, the scan settings); then requests (path, {name: parent-snapshot signature}); the end of
  stdin ends the reader.
- reader -> main: per request, in order, parts ("p", entries, blobs) with blobs =
  [(id, sealed, raw_length, flags)] for contents it has not shipped before (a part holds at
  most ~2 MiB of blobs, so a huge directory never sits in memory), then ("end", warnings, error)
  where error is None or (errno, message) when the directory could not be listed.

A reader ignores SIGINT (the walking process decides) and exits at the end of its stdin, so a
crashed or killed backup never leaves readers behind; a reader that dies fails the backup
(everything already packed is reused by the next run).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from orbitvault.client.chunker import Chunker, ChunkerParams
from orbitvault.client.crypto import MasterKey
from orbitvault.client.pack import BlobCodec, BlobType
from orbitvault.client.pipes import Worker, WorkerPool, read_frame, worker_main, write_frame
from orbitvault.client.scan import Entry, PrevSig, Scanner, ScanSettings
from orbitvault.client.tree import name_key
from orbitvault.errors import OrbitVaultError

_PART_BYTES = 2 << 20
_PART_ENTRIES = 256


# --- the reader process ----------------------------------------------------------------------


class _Reader:
    def __init__(self, setup: dict[str, Any], out: int) -> None:
        key = MasterKey(setup["key"])
        self.codec = BlobCodec(key, setup["level"])
        self.out = out
        self.shipped: set[bytes] = set()
        self.blobs: list[tuple[bytes, bytes, int, int]] = []
        self.blob_bytes = 0
        self.scanner = Scanner(
            ScanSettings(**setup["settings"]),
            key,
            Chunker(ChunkerParams.from_json(setup["chunker"])),
            self._on_chunk,
            max_file=setup["max_file"],
        )

    def _on_chunk(self, bid: bytes, data: memoryview) -> None:
        if bid in self.shipped:
            return
        self.shipped.add(bid)
        enc = self.codec.encode(BlobType.DATA, data, bid)
        self.blobs.append((bid, enc.sealed, enc.raw_length, enc.flags))
        self.blob_bytes += len(enc.sealed)

    def _part(self, entries: list[Entry]) -> None:
        write_frame(self.out, ("p", entries, self.blobs))
        self.blobs, self.blob_bytes = [], 0

    def scan(self, path: str, prev: dict[str, PrevSig] | None) -> None:
        warnings: list[str] = []
        entries: list[Entry] = []
        error = None
        try:
            for entry in self.scanner.scan(path, prev, warnings):
                entries.append(entry)
                if self.blob_bytes >= _PART_BYTES or len(entries) >= _PART_ENTRIES:
                    self._part(entries)
                    entries = []
        except OSError as e:
            error = (e.errno or 0, e.strerror or str(e))
        if entries or self.blobs:
            self._part(entries)
        write_frame(self.out, ("end", warnings, error))


def _start(setup: dict[str, Any], out: int) -> Callable[..., None]:
    return _Reader(setup, out).scan


# --- the walking process's side ------------------------------------------------------------------


class Scan:
    """One directory's scan, filled in by a result thread; `done` is set when it is complete."""

    __slots__ = ("done", "entries", "error", "path", "prev", "prev_subtree", "root_dev", "sent", "warnings")

    def __init__(self, path: str, prev_subtree: bytes | None, root_dev: int | None) -> None:
        self.path = path
        self.prev_subtree = prev_subtree
        self.root_dev = root_dev  # the device of the backup target it is under (--one-file-system)
        self.prev: Any = None  # what `load_prev` returned for prev_subtree (the walk reuses it)
        self.entries: list[Entry] = []
        self.warnings: list[str] = []
        self.error: tuple[int, str] | None = None
        self.sent = False
        self.done = threading.Event()


class _Worker(Worker):
    """One reader process and its requests in flight (oldest first)."""

    def __init__(self, setup: dict[str, Any]) -> None:
        super().__init__("orbitvault.client.readers", setup)
        self.sent: deque[Scan] = deque()


class ReaderPool(WorkerPool):
    """Reader processes scanning directories ahead of the walk.

    The walk `take`s directories in depth-first order. A directory it takes is requested then
    if nobody asked for it before; and as soon as any scan is complete, its result thread asks
    for the subdirectories `subdirs(scan)` names (those the walk will descend into), so the
    readers always have the next directories at hand, even at the end of a subtree. Requests
    leave in the walk's order (smallest path first), at most `depth` per reader and `ahead`
    not yet taken. `on_blob(id, sealed, raw_length, flags)` runs on a result thread for every
    blob a reader sealed; `load_prev(prev_subtree)` runs when a request leaves (any thread)
    and returns (anything, {name: signature}) for the parent snapshot's files.
    """

    what = "reader"

    def __init__(
        self,
        *,
        key: MasterKey,
        chunker: ChunkerParams,
        level: int,
        max_file: int,
        settings: ScanSettings,
        processes: int,
        on_blob: Callable[[bytes, bytes, int, int], None],
        load_prev: Callable[[bytes | None], tuple[Any, dict[str, PrevSig] | None]],
        subdirs: Callable[[Scan], list[tuple[str, bytes | None]]],
        depth: int = 4,
        ahead: int = 32,
    ) -> None:
        setup = {
            "key": key.raw,
            "chunker": chunker.to_json(),
            "level": level,
            "max_file": max_file,
            "settings": dataclasses.asdict(settings),
        }
        super().__init__()
        self.on_blob = on_blob
        self.load_prev = load_prev
        self.subdirs = subdirs
        self.depth = depth
        self.ahead = ahead  # scans sent and not yet taken by the walk (bounds memory)
        self._out = 0
        self._queue: list[tuple[list[bytes], int, Scan]] = []
        self._pending: dict[str, Scan] = {}  # requested, not yet taken by the walk
        self._seq = itertools.count()
        self._lock = threading.RLock()  # the queue, the pending scans, sending
        self._progress = threading.Event()
        self._start(lambda: _Worker(setup), processes, self._collect, "reader-results")

    def expect(self, dirs: list[tuple[str, bytes | None]], root_dev: int | None) -> None:
        """Walking thread: directories (path, prev_subtree) the walk will take later."""
        with self._lock:
            self._request_all(dirs, root_dev)

    def take(self, path: str, prev_subtree: bytes | None, root_dev: int | None, on_wait: Callable[[], None]) -> Scan:
        """Walking thread: the complete scan of `path` (requested now if nobody did before);
        `on_wait()` runs while it waits. Each directory is taken exactly once."""
        with self._lock:
            scan = self._pending.pop(path, None) or self._request(path, prev_subtree, root_dev)
            if not scan.sent:  # needed now: whatever the limits (they only bound the look-ahead)
                self._send(min(self.workers, key=lambda x: len(x.sent)), scan)
        while not scan.done.is_set():
            self._progress.clear()
            self.pump()
            if scan.done.is_set():
                break
            self._progress.wait(0.1)
            self._check()
            on_wait()
        self._check()
        with self._lock:
            self._out -= 1
        self.pump()
        return scan

    def untaken(self) -> int:
        """Scans requested (or in flight) that the walk has not taken: 0 once the walk is over."""
        with self._lock:
            return len(self._pending) + self._out

    def pump(self) -> None:
        """Send queued requests, smallest path first, while a reader has room."""
        with self._lock:
            while self._queue and self._out < self.ahead:
                if self._queue[0][2].sent:  # sent out of turn by `take`
                    heapq.heappop(self._queue)
                    continue
                w = min(self.workers, key=lambda x: len(x.sent))
                if len(w.sent) >= self.depth:
                    return
                self._send(w, heapq.heappop(self._queue)[2])

    def _request(self, path: str, prev_subtree: bytes | None, root_dev: int | None) -> Scan:
        scan = Scan(path, prev_subtree, root_dev)
        heapq.heappush(self._queue, ([name_key(p) for p in path.split("/")], next(self._seq), scan))
        return scan

    def _request_all(self, dirs: list[tuple[str, bytes | None]], root_dev: int | None) -> None:
        for path, prev_subtree in dirs:
            if path not in self._pending:
                self._pending[path] = self._request(path, prev_subtree, root_dev)

    def _send(self, w: _Worker, scan: Scan) -> None:
        self._check()
        scan.prev, sigs = self.load_prev(scan.prev_subtree)
        scan.sent = True
        self._out += 1
        w.sent.append(scan)
        try:
            write_frame(w.inp, (scan.path, sigs))
        except OSError as e:
            self._fail(OrbitVaultError(f"a reader process is gone ({e.strerror or e})"))

    def _collect(self, w: _Worker) -> None:
        try:
            while True:
                msg = read_frame(w.out)
                if msg is None:
                    self._ended(w, bool(w.sent))
                    return
                if msg[0] == "p":
                    for blob in msg[2]:
                        self.on_blob(*blob)
                    w.sent[0].entries.extend(msg[1])
                else:
                    with self._lock:
                        scan = w.sent.popleft()
                        scan.warnings, scan.error = msg[1], msg[2]
                        if scan.error is None:  # its subdirectories are pending before the walk can take it
                            self._request_all(self.subdirs(scan), scan.root_dev)
                        self.pump()
                    scan.done.set()
                    self._progress.set()
        except BaseException as e:
            self._fail(e, raise_=False)

    def _fail(self, error: BaseException, *, raise_: bool = True) -> None:
        """Stop: nobody may wait forever, so every scan still owed is marked done (failed)."""
        if self.error is None:
            self.error = error
        for w in self.workers:
            for scan in list(w.sent):
                scan.done.set()
        self._progress.set()
        if raise_:
            raise self.error


if __name__ == "__main__":
    worker_main(_start)
