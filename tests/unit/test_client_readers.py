"""Reader processes: the same snapshot as the walk alone, exact dedupe, failures that end cleanly."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from orbitvault.client.archiver import Archiver, BackupOptions
from orbitvault.client.backend import LocalBackend
from orbitvault.client.chunker import ChunkerParams
from orbitvault.client.crypto import KdfParams
from orbitvault.client.filters import CACHEDIR_SIGNATURE
from orbitvault.client.readers import ReaderPool
from orbitvault.client.repository import Repository
from orbitvault.client.restorer import RestoreOptions, Restorer
from orbitvault.errors import OrbitVaultError

ROOT = os.geteuid() == 0


def _repo(path: Path) -> Repository:
    return Repository.init(
        LocalBackend(path),
        b"pw",
        kdf=KdfParams(1, 1024, 1),
        chunker=ChunkerParams(4096, 16384, 65536, seed=9),
        pack_size=64 * 1024,
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    # atime after mtime: reading a file (the tag file's header check) must not change its node.
    os.utime(path, (2_000_000_000, 1_600_000_000))


def _tree(src: Path) -> None:
    """Everything a scan decides about, spread over directories two readers share."""
    _write(src / "a" / "one.txt", b"same content in two directories\n" * 40)
    _write(src / "b" / "one-copy.txt", b"same content in two directories\n" * 40)
    _write(src / "a" / "big.bin", os.urandom(300_000))  # above inline_limit: the walk's pool reads it
    _write(src / "a" / "empty", b"")
    _write(src / "a" / "skip.tmp", b"excluded")
    _write(src / "a" / "h1", b"one inode, two names")
    os.link(src / "a" / "h1", src / "b" / "h2")
    os.symlink("../a/one.txt", src / "b" / "link")
    os.mkfifo(src / "a" / "fifo")
    _write(src / "c" / "CACHEDIR.TAG", CACHEDIR_SIGNATURE.encode() + b"\n")
    _write(src / "c" / "junk", b"cache")
    for i in range(600):  # more entries than one part of a reader's answer
        _write(src / "d" / f"f{i:04}", b"file %d\n" % i * (1 + i % 50))
    _write(src / "e" / "x" / "y" / "z" / "deep", b"deep")
    (src / "empty-dir").mkdir()
    if not ROOT:
        _write(src / "a" / "secret", b"unreadable")
        os.chmod(src / "a" / "secret", 0)
    with contextlib.suppress(OSError):
        os.setxattr(src / "a" / "one.txt", "user.note", b"kept")
    for d in ("a", "b", "c", "d", "e", "empty-dir"):
        os.utime(src / d, (1_600_000_500, 1_600_000_500))


def _backup(repo: Repository, src: Path, **kw: object) -> tuple[object, object, Archiver]:
    a = Archiver(repo, BackupOptions(paths=[str(src)], excludes=["*.tmp"], exclude_caches=True, **kw))  # type: ignore[arg-type]
    snap, summary = a.run()
    return snap, summary, a


def _find(repo: Repository, tree: bytes, path: Path) -> bytes:
    for part in path.resolve().parts[1:]:
        (node,) = [n for n in repo.load_tree(tree) if n.name == part]
        assert node.subtree is not None
        tree = node.subtree
    return tree


def test_readers_give_the_walks_own_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    alone_repo, readers_repo = _repo(tmp_path / "r1"), _repo(tmp_path / "r2")
    _s1, alone, a1 = _backup(alone_repo, src, read_processes=0)
    snap, readers, a2 = _backup(readers_repo, src, read_processes=2)
    # Same decisions: what was read, skipped, stored once (the two equal files), reported.
    for field in ("files_new", "files_read", "bytes_read", "data_blobs", "data_added", "errors", "dirs_new"):
        assert getattr(readers, field) == getattr(alone, field), field
    assert sorted(a2.warnings) == sorted(a1.warnings) and any("special file" in w for w in a2.warnings)
    assert [e.path for e in a2.errors] == [e.path for e in a1.errors] == ([] if ROOT else [str(src / "a" / "secret")])
    # Same tree, byte for byte: both modes back up into one repository and meet in the same ids.
    again, _s, _a = _backup(readers_repo, src, read_processes=0, force=True)
    assert _find(readers_repo, again.tree, src) == _find(readers_repo, snap.tree, src)
    target = tmp_path / "t"
    summary = Restorer(readers_repo, snap, RestoreOptions(target=str(target), verify=True)).run()
    root = target / src.relative_to("/")
    assert summary.errors == 0
    assert (root / "b" / "one-copy.txt").read_bytes() == (src / "b" / "one-copy.txt").read_bytes()
    assert sorted(p.name for p in (root / "d").iterdir()) == [f"f{i:04}" for i in range(600)]
    assert sorted(p.name for p in (root / "c").iterdir()) == ["CACHEDIR.TAG"]
    assert not (root / "a" / "skip.tmp").exists() and (root / "e" / "x" / "y" / "z" / "deep").exists()
    assert (root / "a" / "h1").stat().st_ino == (root / "b" / "h2").stat().st_ino


def test_readers_started_mid_walk_scan_ahead_and_leave_nothing_untaken(tmp_path: Path) -> None:
    """Readers that start below the first directories take over the rest of the walk: the
    directories the walk already saw and those each scan finds are scanned ahead, every one is
    taken exactly once, and the snapshot is the walk's own."""
    src = tmp_path / "src"
    for d in range(12):
        for s in range(6):
            for f in range(8):
                _write(src / f"d{d:02}" / f"s{s}" / f"f{f}", b"%d/%d/%d\n" % (d, s, f) * (1 + f))
        _write(src / f"d{d:02}" / "s0" / "deeper" / "x", b"x%d" % d)
    alone_repo, readers_repo = _repo(tmp_path / "r1"), _repo(tmp_path / "r2")
    _s1, alone, _a1 = _backup(alone_repo, src, read_processes=0)
    seen: list[object] = []
    orig = ReaderPool.close

    def close(pool: ReaderPool) -> None:
        seen.append(pool.untaken())
        orig(pool)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ReaderPool, "close", close)
        snap, readers, _a2 = _backup(readers_repo, src, read_processes=2, readers_after=40)
    assert seen == [0], "readers never started, or scans were requested that the walk never took"
    for field in ("files_new", "files_read", "dirs_new", "errors"):
        assert getattr(readers, field) == getattr(alone, field), field
    again, _s, _a = _backup(readers_repo, src, read_processes=0, force=True)
    assert _find(readers_repo, again.tree, src) == _find(readers_repo, snap.tree, src)


def test_readers_skip_unchanged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    repo = _repo(tmp_path / "r")
    _backup(repo, src, read_processes=2)
    _write(src / "d" / "f0007", b"changed")
    _snap, s, _a = _backup(repo, src, read_processes=2)
    assert s.files_read == 1 and s.files_changed == 1 and s.data_blobs == 1


@pytest.mark.skipif(ROOT, reason="root lists every directory")
def test_unlistable_directory_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / "ok" / "f", b"f")
    _write(src / "closed" / "g", b"g")
    os.chmod(src / "closed", 0)
    try:
        _snap, s, a = _backup(_repo(tmp_path / "r"), src, read_processes=2)
    finally:
        os.chmod(src / "closed", 0o700)
    assert s.errors == 1 and a.errors[0].path == str(src / "closed") and s.files_new == 1


def _readers_of_this_process() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"orbitvault.client.readers" in cmd:
                pids.append(int(pid))
    return pids


def test_killed_reader_fails_the_backup_and_the_next_one_completes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(1500):
        _write(src / f"d{i % 300:03}" / f"f{i}", os.urandom(3000))
    repo = _repo(tmp_path / "r")
    failure: list[BaseException] = []

    def run() -> None:
        try:  # slowed by its uploads, so it cannot finish before the kill, however loaded the machine
            _backup(repo, src, read_processes=2, limit_upload_kib=256)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    # Once packs are stored, the readers have been answering (a reader that dies before it
    # starts only makes the backup read in one process, with a warning).
    packs = tmp_path / "r" / "data"
    deadline = time.monotonic() + 20
    while not any(p.is_file() for p in packs.rglob("*")) and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    pids = _readers_of_this_process()
    assert pids, "the backup never started its readers"
    os.kill(pids[0], 9)
    t.join(timeout=30)
    assert not t.is_alive(), "the backup hung on a dead reader"
    assert len(failure) == 1 and isinstance(failure[0], OrbitVaultError) and "reader process" in str(failure[0])
    assert _readers_of_this_process() == []  # the other reader was stopped too
    _snap, s, _a = _backup(repo, src, read_processes=2)
    assert s.errors == 0 and s.files_new == 1500


def _children_running(module: str) -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if module.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def test_killed_restore_writer_fails_the_restore_or_it_is_complete(tmp_path: Path) -> None:
    """Whatever moment a writer process dies at: the restore says so, or everything is there."""
    src = tmp_path / "src"
    for i in range(3000):
        _write(src / f"d{i % 100:02}" / f"f{i}", os.urandom(2000 + i))
    repo = _repo(tmp_path / "r")
    snap, _s, _a = _backup(repo, src, read_processes=0)
    target = tmp_path / "t"
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            Restorer(repo, snap, RestoreOptions(target=str(target), processes=2)).run()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 20
    while not (pids := _children_running("orbitvault.client.writers")) and t.is_alive():
        assert time.monotonic() < deadline, "no writer process started"
        time.sleep(0.001)
    if pids:
        os.kill(pids[0], 9)
    t.join(timeout=60)
    assert not t.is_alive(), "the restore hung on a dead writer"
    assert _children_running("orbitvault.client.writers") == []
    if outcome[0] is not None:
        assert isinstance(outcome[0], OrbitVaultError) and "writer process" in str(outcome[0])
    else:  # the writer had finished its share: nothing may be missing
        root = target / src.relative_to("/")
        assert sum(1 for p in root.rglob("f*") if p.is_file()) == 3000
