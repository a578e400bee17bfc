"""backup -> modify/add/delete/rename -> backup -> diff -> restore both, through the real CLI."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.e2e.test_backup_support import OV, manifest, restored_root, write, xattrs_supported


def _tree(src: Path) -> None:
    rng = random.Random(5)
    text = b"".join(b"line %d of a source file, compressible\n" % i for i in range(20000))
    write(src / "docs" / "readme.txt", b"hello\n" * 100, mtime=1_600_000_000)
    write(src / "docs" / "big.txt", text, mtime=1_600_000_100, mode=0o640)
    write(src / "data" / "a.bin", rng.randbytes(700_000), mtime=1_600_000_200)
    write(src / "data" / "dup.bin", (src / "data" / "a.bin").read_bytes())  # dedupes entirely
    write(src / "old.txt", b"to be deleted\n")
    write(src / "empty", b"")
    write(src / "exec.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    (src / "emptydir").mkdir()
    (src / "private").mkdir(mode=0o700)
    write(src / "private" / "secret", b"s" * 10, mode=0o600)
    os.symlink("docs/readme.txt", src / "link")
    os.symlink("/nonexistent/absolute", src / "dangling")
    os.link(src / "docs" / "readme.txt", src / "hardlink")
    # A sparse file: data, a 2 MiB hole, data.
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(2 * 1024 * 1024)
        f.write(b"tail")
    if xattrs_supported(src):
        os.setxattr(src / "docs" / "readme.txt", "user.comment", b"kept")
        os.setxattr(src / "emptydir", "user.dir", b"also kept")
    if os.geteuid() == 0:
        os.chown(src / "exec.sh", 1234, 2345)
    for d in ("docs", "data", "emptydir", "private"):
        os.utime(src / d, (1_600_000_500, 1_600_000_500))


def _diff_lines(ov: OV, a: str, b: str) -> set[tuple[str, str]]:
    out = ov.run("diff", a, b).stdout
    lines = set()
    for line in out.splitlines():
        if line[:1] in "+-MTU" and line[1:2] == " ":
            lines.add((line[0], line[1:].strip()))
    return lines


@pytest.mark.parametrize("readers", [[], ["--read-processes", "2"]], ids=["one-process", "worker-processes"])
def test_backup_change_diff_restore_each_snapshot(tmp_path: Path, readers: list[str]) -> None:
    work, out, repo = tmp_path / "work", tmp_path / "out", tmp_path / "repo"
    work.mkdir()
    out.mkdir()
    src = work / "src"
    _tree(src)
    ov = OV(repo)
    ov.init()

    writers = ["--write-processes", "2"] if readers else []  # processes on both sides, or none
    s1 = ov.json("backup", str(src), *readers)
    assert s1["errors"] == 0 and s1["files_new"] == 10
    assert s1["files_read"] == 8  # the hard link and the empty file are not read
    m1 = manifest(src)

    # modify, add, delete, rename
    write(src / "docs" / "big.txt", (src / "docs" / "big.txt").read_bytes() + b"appended\n", mode=0o640)
    write(src / "data" / "new.bin", os.urandom(300_000))
    (src / "old.txt").unlink()
    (src / "data" / "a.bin").rename(src / "data" / "b.bin")
    s2 = ov.json("backup", str(src), *readers)
    assert s2["errors"] == 0
    # Only the modified and the new file are read again (the renamed one: new name, read, deduped).
    assert s2["files_read"] == 3 and s2["files_unmodified"] == 7
    m2 = manifest(src)

    snaps = ov.json("snapshots")
    assert [s["id"] for s in snaps] == [s1["snapshot_id"], s2["snapshot_id"]]
    assert snaps[1]["parent"] == s1["snapshot_id"]

    base = str(src.resolve())
    assert _diff_lines(ov, s1["snapshot_id"], s2["snapshot_id"]) == {
        ("M", f"{base}/docs/big.txt"),
        ("+", f"{base}/data/new.bin"),
        ("-", f"{base}/old.txt"),
        ("-", f"{base}/data/a.bin"),
        ("+", f"{base}/data/b.bin"),
    }

    for sid, expected, name in ((s1["snapshot_id"], m1, "t1"), (s2["snapshot_id"], m2, "t2")):
        target = out / name
        r = ov.json("restore", sid, "--target", str(target), "--verify", *writers)
        assert r["errors"] == 0 and r["files_verified"] > 0
        got = manifest(restored_root(target, src))
        assert got == expected
        sparse = restored_root(target, src) / "sparse"
        assert sparse.stat().st_blocks * 512 < 1024 * 1024  # the hole stayed a hole

    # Unchanged re-backup: nothing is opened for reading, nothing new is stored.
    s3 = ov.json("backup", str(src), *readers)
    assert s3["files_read"] == 0 and s3["bytes_read"] == 0
    assert s3["data_blobs"] == 0
    # Only the directories above src (/tmp, ...) may have changed meanwhile (other processes).
    assert s3["tree_blobs"] <= len(src.resolve().parts) - 1
    assert s3["files_unmodified"] == s3["total_files_processed"] == 10
    assert _diff_lines(ov, s2["snapshot_id"], s3["snapshot_id"]) == set()

    chk = ov.json("check", "--read-data")
    assert chk["num_errors"] == 0 and chk["packs_read"] > 0


def test_restore_include_exclude_and_ls(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "keep" / "a.txt", b"a")
    write(src / "keep" / "b.log", b"b")
    write(src / "skip" / "c.txt", b"c")
    ov = OV(tmp_path / "repo")
    ov.init()
    sid = ov.json("backup", str(src), "--exclude", "*.log")["snapshot_id"]
    listed = ov.run("ls", sid).stdout.splitlines()
    base = str(src.resolve())
    assert f"{base}/keep/a.txt" in listed and f"{base}/keep/b.log" not in listed
    nodes = [n for n in ov.json_lines("ls", "latest") if n.get("struct_type") == "node"]
    assert {n["path"] for n in nodes if n["type"] == "file"} == {f"{base}/keep/a.txt", f"{base}/skip/c.txt"}

    target = tmp_path / "t"
    ov.run("restore", "latest", "--target", str(target), "--include", "keep")
    root = restored_root(target, src)
    assert (root / "keep" / "a.txt").read_bytes() == b"a"
    assert not (root / "skip").exists()

    target2 = tmp_path / "t2"
    ov.run("restore", sid, "--target", str(target2), "--exclude", "/**/keep")
    root2 = restored_root(target2, src)
    assert not (root2 / "keep").exists() and (root2 / "skip" / "c.txt").exists()


def test_unreadable_file_exits_3_and_snapshot_is_saved(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        import pytest

        pytest.skip("root reads everything")
    src = tmp_path / "src"
    write(src / "ok", b"ok")
    write(src / "nope", b"no", mode=0o000)
    ov = OV(tmp_path / "repo")
    ov.init()
    p = ov.run("backup", str(src), "--json", check=False)
    assert p.returncode == 3
    assert len(ov.json("snapshots")) == 1


def test_missing_source_path_exits_3_and_snapshot_is_saved(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ok", b"ok")
    ov = OV(tmp_path / "repo")
    ov.init()
    p = ov.run("backup", str(src), str(tmp_path / "does-not-exist"), "--json", check=False)
    assert p.returncode == 3, p.stderr
    assert "does-not-exist" in p.stderr
    assert len(ov.json("snapshots")) == 1
