"""Writer processes get a restore's contents batch by batch while the walk goes on: what straddles
batches (a directory's files, multi-blob files, hard links to a file of an earlier batch) comes out
exactly as a restore by threads does."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orbitvault.client import restorer
from orbitvault.client.restorer import RestoreOptions, Restorer
from tests.unit.test_client_readers import _backup, _repo, _write


def _listing(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below root: type, mode, mtime, content or link target, and which entries share an inode."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # the same order in both trees, so the same name is "first" of a link
        for name in dirnames + sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                first = inodes.setdefault(st.st_ino, rel)
                out[rel] = (
                    "file",
                    st.st_mode,
                    st.st_mtime_ns,
                    p.read_bytes(),
                    st.st_nlink,
                    first if first != rel else None,
                )
    return out


def test_restore_in_small_batches_is_the_restore_by_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for i in range(30):  # several chunks each (the test repository's chunks average 16 KiB)
        _write(src / f"d{i % 3}" / f"multi{i}", os.urandom(60_000 + 997 * i))
    for i in range(400):
        _write(src / f"d{i % 7}" / "sub" / f"f{i:03}", b"%d " % i * (1 + i % 40))
    for i in range(5):
        _write(src / "d1" / f"empty{i}", b"")
        os.symlink(f"../d0/multi{i}", src / "d2" / f"link{i}")
    (src / "zz-late").mkdir()
    os.link(src / "d0" / "multi0", src / "zz-late" / "same-as-multi0")
    os.link(src / "d0" / "sub" / "f007", src / "zz-late" / "same-as-f007")
    (src / "zz-late" / "empty-dir").mkdir()
    for d in src.rglob("*"):
        if d.is_dir():
            os.utime(d, (1_600_000_500, 1_600_000_500))
    repo = _repo(tmp_path / "r")
    snap, _s, _a = _backup(repo, src, read_processes=0)

    by_threads = Restorer(repo, snap, RestoreOptions(target=str(tmp_path / "threads"), processes=0)).run()
    monkeypatch.setattr(restorer, "_STREAM_REFS", 5)  # a batch every few blobs: 100+ batches
    by_writers = Restorer(repo, snap, RestoreOptions(target=str(tmp_path / "writers"), processes=2)).run()

    inside = src.relative_to("/")
    threads, writers = _listing(tmp_path / "threads" / inside), _listing(tmp_path / "writers" / inside)
    assert threads == _listing(src)
    assert writers == threads
    assert writers["zz-late/same-as-multi0"][-1] == "d0/multi0"  # hard-linked across batches
    for field in ("files_restored", "dirs_restored", "symlinks_restored", "hardlinks_restored", "bytes_restored"):
        assert getattr(by_writers, field) == getattr(by_threads, field), field
    assert by_writers.errors == 0 and by_threads.errors == 0
