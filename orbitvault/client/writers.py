"""Writer processes: a large restore's blobs are opened, decompressed, verified and written into
their files outside the process that plans the restore.

Why processes: per small file a restore makes a handful of system calls (create, write, utime,
close) and some Python; restore threads queue for one GIL, and one returning from a system call
waits for it again, so three threads restored no faster than one (measured, BENCHMARKS.md).

The planning process keeps everything that decides what is written where: it reads the trees,
checks every name, creates the directories and the multi-blob files, reads the packs and sends
each ranged read with its blobs' targets to a writer. A writer runs the restorer's own code for
the rest (`Restorer._write_group`: decode, verify, then create a one-blob file with O_EXCL and
O_NOFOLLOW below directory descriptors reached one component at a time, or pwrite into a file
the planner created), so the rules that keep a hostile snapshot inside the target are the same
code in both places. A writer never creates directories the planner did not.

Protocol over the writer's stdin/stdout (`pipes.py` frames):

- planner -> writer: the setup (raw master key, the local repository's directory or None,
  target, sparse, owner), then jobs (pack id, [(entries and their targets, bytes of the ranged
  read, or None to read it from the local repository)], files new to this writer as (id, path,
  node, one-blob)); the end of stdin ends the writer;
- writer -> planner, one answer per job: (targets written, one file id per blob written into it;
  file ids that failed; errors as (path, message); bytes restored; bytes left sparse).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from orbitvault.client.backend import LocalBackend, object_name
from orbitvault.client.crypto import MasterKey
from orbitvault.client.pack import BlobCodec
from orbitvault.client.pipes import Worker, WorkerPool, read_frame, worker_main, write_frame
from orbitvault.client.restorer import RestoreFile, RestoreOptions, Restorer
from orbitvault.client.tree import Node
from orbitvault.errors import OrbitVaultError

Answer = tuple[list[int], list[int], list[tuple[str, str]], int, int]

# --- the writer process ----------------------------------------------------------------------


class _Writer:
    def __init__(self, setup: dict[str, Any]) -> None:
        # A local repository is read here (the planner sends only what to read); for any other
        # the planner sends the bytes it read.
        local = LocalBackend(setup["local"]) if setup["local"] else None
        repo = SimpleNamespace(
            codec=BlobCodec(MasterKey(setup["key"])),
            backend=local,
            pack_name=lambda pack_id: object_name("data", pack_id.hex()),
        )
        opts = RestoreOptions(target=setup["target"], sparse=setup["sparse"], owner=setup["owner"])
        r = Restorer(repo, None, opts)  # type: ignore[arg-type]
        os.umask(0)  # like the planner: files are created with their final permission bits
        r._umask_cleared = True
        r._open_target()
        self.r = r
        self.files: dict[int, RestoreFile] = {}

    def job(self, pack_id: bytes, groups: list[Any], new_files: list[Any]) -> Answer:
        r = self.r
        for fid, path, (mode, uid, gid, atime, mtime, xattrs), single in new_files:
            # What creating and finishing a one-blob file needs; multi-blob files are finished
            # by the planner, which counts their blobs.
            node = Node(path[-1], "file", mode, uid, gid, mtime_ns=mtime, atime_ns=atime, xattrs=xattrs)
            self.files[fid] = RestoreFile(path, node, remaining=1 << 62, single=single)
        done_before, sparse_before = r.summary.bytes_restored, r.summary.bytes_sparse
        touched: list[int] = []
        for entries, buf in groups:
            group = [(e, [(self.files[fid], off) for fid, off in targets]) for e, targets in entries]
            touched += [fid for _e, targets in entries for fid, _off in targets]
            view = memoryview(buf) if buf is not None else r._read_group(pack_id, group)
            if view is not None:  # a failed read has marked its files failed, with the error
                r._write_group(pack_id, group, view)
        failed = sorted({fid for fid in touched if self.files[fid].failed})
        for fid in touched:  # a one-blob file is done: forget it (memory stays bounded by the jobs)
            if self.files[fid].single:
                del self.files[fid]
        errors = [(e.path, e.message) for e in r.errors]
        r.errors.clear()
        return (
            touched,
            failed,
            errors,
            r.summary.bytes_restored - done_before,
            r.summary.bytes_sparse - sparse_before,
        )


def _start(setup: dict[str, Any], out: int) -> Callable[..., None]:
    writer = _Writer(setup)

    def job(*args: Any) -> None:
        write_frame(out, writer.job(*args))

    return job


# --- the planning process's side -----------------------------------------------------------------


class _Proc(Worker):
    """One writer process, what it has been told and its jobs in flight."""

    def __init__(self, setup: dict[str, Any]) -> None:
        super().__init__("orbitvault.client.writers", setup)
        self.known: set[int] = set()  # file ids this writer has been told about
        self.jobs: deque[int] = deque()  # job sizes in flight, oldest first


class WriterPool(WorkerPool):
    """Writer processes; `submit` blocks while every writer has `depth` jobs in flight, and
    `on_answer(answer)` runs on a result thread for each job done."""

    what = "restore writer"

    def __init__(
        self,
        *,
        key: MasterKey,
        local: str | None,
        target: str,
        sparse: bool,
        owner: bool,
        processes: int,
        on_answer: Callable[[Answer], None],
        depth: int = 2,
    ) -> None:
        setup = {"key": key.raw, "local": local, "target": os.path.abspath(target), "sparse": sparse, "owner": owner}
        super().__init__()
        self.reads_local = local is not None  # writers read the packs themselves
        self.on_answer = on_answer
        self.depth = depth
        self._cond = threading.Condition()
        self._start(lambda: _Proc(setup), processes, self._collect, "writer-results")

    def submit(self, pack_id: bytes, groups: list[Any], files: dict[int, RestoreFile]) -> None:
        """One pack's ranged reads, for the writer with the least in flight; `files` holds
        every file the groups name (by id)."""
        with self._cond:
            while True:
                self._check()
                free = [x for x in self.workers if len(x.jobs) < self.depth]
                if free:
                    p = min(free, key=lambda x: sum(x.jobs))
                    break
                self._cond.wait(0.1)
            size = sum(e[3] for entries, _buf in groups for e, _targets in entries)  # stored bytes
            p.jobs.append(size)
        new = [
            (fid, f.path, (n.mode, n.uid, n.gid, n.atime_ns, n.mtime_ns, n.xattrs), f.single)
            for fid in {fid for entries, _buf in groups for _e, targets in entries for fid, _o in targets}
            if fid not in p.known
            for f in (files[fid],)
            for n in (f.node,)
        ]
        p.known.update(fid for fid, *_rest in new)
        try:
            write_frame(p.inp, (pack_id, groups, new))
        except OSError as e:
            self._fail(OrbitVaultError(f"a restore writer process is gone ({e.strerror or e})"))

    def drain(self) -> None:
        """Wait until every job submitted is answered."""
        with self._cond:
            while any(p.jobs for p in self.workers):
                self._check()
                self._cond.wait(0.1)
            self._check()

    def _collect(self, p: _Proc) -> None:
        try:
            while True:
                answer = read_frame(p.out)
                if answer is None:
                    self._ended(p, bool(p.jobs))
                    return
                self.on_answer(answer)
                with self._cond:
                    p.jobs.popleft()
                    self._cond.notify_all()
        except BaseException as e:
            self._fail(e, raise_=False)

    def _fail(self, error: BaseException, *, raise_: bool = True) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()
        if raise_:
            raise self.error


if __name__ == "__main__":
    worker_main(_start)
