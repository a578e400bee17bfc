"""The archiver and restorer in-process (the e2e tests cover the CLI around them)."""

from __future__ import annotations

import os
from pathlib import Path

from orbitvault.client.archiver import Archiver, BackupOptions
from orbitvault.client.backend import LocalBackend
from orbitvault.client.chunker import ChunkerParams
from orbitvault.client.crypto import KdfParams
from orbitvault.client.repository import Repository
from orbitvault.client.restorer import RestoreOptions, Restorer


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(
        LocalBackend(tmp_path / "repo"),
        b"pw",
        kdf=KdfParams(1, 1024, 1),
        chunker=ChunkerParams(4096, 16384, 65536, seed=9),
        pack_size=64 * 1024,
    )


def _backup(repo: Repository, *paths: Path, **kw: object) -> tuple[object, object, Archiver]:
    a = Archiver(repo, BackupOptions(paths=[str(p) for p in paths], **kw))  # type: ignore[arg-type]
    snap, summary = a.run()
    return snap, summary, a


def test_backup_restore_and_parent(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(100_000))
    (src / "g").write_bytes(b"g" * 50_000)
    os.link(src / "g", src / "g2")
    repo = _repo(tmp_path)
    snap, s, _a = _backup(repo, src)
    assert s.files_read == 2 and s.files_new == 3 and s.errors == 0  # g2 shares g's inode
    snap2, s2, a2 = _backup(repo, src)
    assert a2.parent is not None and a2.parent.id == snap.id
    assert s2.files_read == 0 and s2.files_unmodified == 3
    # Same content, same tree (compared at `src`: its ancestors are shared with parallel tests and change).
    assert _find(repo, snap2.tree, src) == _find(repo, snap.tree, src)
    target = tmp_path / "t"
    summary = Restorer(repo, snap2, RestoreOptions(target=str(target), verify=True)).run()
    root = target / src.relative_to("/")
    assert summary.errors == 0 and summary.hardlinks_restored == 1
    assert (root / "d" / "f").read_bytes() == (src / "d" / "f").read_bytes()
    assert (root / "g").stat().st_ino == (root / "g2").stat().st_ino


def test_same_tree_whatever_the_concurrency(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(20_000 + i))
    repo = _repo(tmp_path)
    one, _s, _a = _backup(repo, src, read_concurrency=1, force=True)
    four, _s, _a = _backup(repo, src, read_concurrency=4, force=True)
    assert _find(repo, one.tree, src) == _find(repo, four.tree, src)  # src's ancestors change under parallel tests


def test_excludes_dry_run_and_many_directories(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4300):  # more than the 4096 directories the walk may keep pending
        (src / f"{i:05}").mkdir(parents=True)
    (src / "00001" / "keep.txt").write_bytes(b"k")
    (src / "00001" / "drop.tmp").write_bytes(b"d")
    repo = _repo(tmp_path)
    snap, s, _a = _backup(repo, src, dry_run=True)
    assert snap is None and s.dry_run and repo.list_ids("snapshot") == []
    assert list(repo.backend.list("data")) == []
    snap, s, _a = _backup(repo, src, excludes=["*.tmp"])
    assert s.files_new == 1 and s.dirs_new >= 4300
    names = {n.name for n in repo.load_tree(_find(repo, snap.tree, src / "00001"))}
    assert names == {"keep.txt"}


def _find(repo: Repository, tree: bytes, path: Path) -> bytes:
    for part in path.parts[1:]:
        tree = next(n for n in repo.load_tree(tree) if n.name == part).subtree  # type: ignore[assignment]
    return tree


def test_type_changes_between_snapshots(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_bytes(b"file")
    repo = _repo(tmp_path)
    _backup(repo, src)
    (src / "x").unlink()
    (src / "x").mkdir()
    (src / "x" / "inner").write_bytes(b"now a dir")
    snap, s, _a = _backup(repo, src)
    assert s.errors == 0
    target = tmp_path / "t"
    Restorer(repo, snap, RestoreOptions(target=str(target))).run()
    assert (target / src.relative_to("/") / "x" / "inner").read_bytes() == b"now a dir"
    # Restoring the older snapshot over it replaces the directory's file... and refuses to
    # delete a non-empty directory (reported, nothing else touched).
    first = repo.load_snapshots()[0]
    r = Restorer(repo, first, RestoreOptions(target=str(target)))
    r.run()
    assert r.errors and "directory" in r.errors[0].message


def test_stdin_stream_from_a_pipe(tmp_path: Path) -> None:
    import threading

    data = os.urandom(300_000)
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), 7_000):  # short writes: the reader sees short reads
                f.write(data[i : i + 7_000])
                f.flush()

    t = threading.Thread(target=feed)
    t.start()
    repo = _repo(tmp_path)
    try:
        snap, s, a = _backup(repo, stdin_fd=r, stdin_filename="/../a/b.sql")
    finally:
        t.join()
        os.close(r)
    assert a.parent is None and snap.paths == ["/a/b.sql"] and s.files_new == 1 and s.data_blobs > 4
    (d,) = repo.load_tree(snap.tree)
    assert (d.name, d.type, d.mode, d.uid) == ("a", "dir", 0o755, os.getuid())
    (f,) = repo.load_tree(d.subtree)  # type: ignore[arg-type]
    assert (f.name, f.mode, f.size) == ("b.sql", 0o644, len(data))
    assert b"".join(repo.read_blob(c) for c in f.content or []) == data
