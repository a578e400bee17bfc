"""What a backup selects and a restore picks, through the real CLI: --files-from*, --exclude-caches,
--exclude-if-present, --exclude-larger-than, --stdin, and restore/ls SNAPSHOT:SUBFOLDER."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.test_backup_support import OV, manifest, write

SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _files(ov: OV, ref: str = "latest") -> set[str]:
    return {n["path"] for n in ov.json_lines("ls", ref) if n.get("struct_type") == "node" and n["type"] == "file"}


def _failed(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1 with one clear line (no traceback) naming what is wrong."""
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_exclude_caches_if_present_and_larger_than(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "keep" / "a.txt", b"a")
    write(src / "cache" / "CACHEDIR.TAG", SIGNATURE + b"\n# This file is a cache directory tag.\n")
    write(src / "cache" / "blob", b"cached")
    write(src / "cache" / "sub" / "deep", b"deep")
    write(src / "fake" / "CACHEDIR.TAG", b"Signature: not the right one, this directory is kept\n")
    write(src / "fake" / "f", b"f")
    write(src / "marked" / ".nobackup", b"")
    write(src / "marked" / "x", b"x")
    write(src / "hdr" / ".tag", b"KEEPOUT and more")
    write(src / "hdr" / "y", b"y")
    write(src / "wronghdr" / ".tag", b"KEEP")  # too short for the header: reported, kept
    write(src / "wronghdr" / "z", b"z")
    write(src / "big.bin", random.Random(1).randbytes(1024 * 1024 + 1))
    write(src / "edge.bin", b"e" * 1024 * 1024)  # exactly 1M: not larger, kept
    ov = OV(tmp_path / "repo")
    ov.init()
    p = ov.run(
        "backup",
        str(src),
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-if-present",
        ".tag:KEEPOUT",
        "--exclude-larger-than",
        "1M",
    )
    assert "invalid signature in exclusion tagfile" in p.stderr and "fake/CACHEDIR.TAG" in p.stderr
    assert "too short" in p.stderr and "wronghdr/.tag" in p.stderr
    base = str(src.resolve())
    assert _files(ov) == {
        f"{base}/{rel}"
        for rel in (
            "keep/a.txt",
            "cache/CACHEDIR.TAG",  # the tag stays, so a restore shows why the directory is empty
            "fake/CACHEDIR.TAG",
            "fake/f",
            "marked/.nobackup",
            "hdr/.tag",
            "wronghdr/.tag",
            "wronghdr/z",
            "edge.bin",
        )
    }
    dirs = {n["path"] for n in ov.json_lines("ls", "latest") if n.get("type") == "dir"}
    assert {f"{base}/cache", f"{base}/marked", f"{base}/hdr"} <= dirs  # the directories themselves are kept
    assert f"{base}/cache/sub" not in dirs

    # Without the options everything is backed up again.
    ov.run("backup", str(src))
    assert f"{base}/cache/sub/deep" in _files(ov) and f"{base}/big.bin" in _files(ov)


def test_files_from_lists_and_positional_paths(tmp_path: Path) -> None:
    src = (tmp_path / "src").resolve()
    for rel in ("docs/a.txt", "docs/b.txt", "docs/c.md", "docs/.hidden.txt", "other/skip.txt", "extra.txt"):
        write(src / rel, rel.encode())
    write(src / "name with  spaces ", b"s")
    write(src / "#hash", b"h")
    write(src / "new\nline", b"n")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "globs").write_text(
        f"# a comment\n\n   {src}/docs/*.txt   \r\n{src}/docs/c.md\n  # indented comment\n{src}/nothing-*.txt\n"
    )
    (lists / "verbatim").write_text(f"{src}/name with  spaces \n\n{src}/#hash\n")
    (lists / "raw").write_bytes(f"{src}/new\nline\0".encode())
    ov = OV(tmp_path / "repo")
    ov.init()
    p = ov.run(
        "backup",
        str(src / "extra.txt"),
        "--files-from",
        str(lists / "globs"),
        "--files-from-verbatim",
        str(lists / "verbatim"),
        "--files-from-raw",
        str(lists / "raw"),
    )
    assert "does not match any files" in p.stderr and "nothing-*.txt" in p.stderr
    expected = {
        f"{src}/{rel}"
        for rel in (
            "docs/a.txt",
            "docs/b.txt",
            "docs/.hidden.txt",  # a glob's * matches hidden names too, as Go's filepath.Glob
            "docs/c.md",
            "name with  spaces ",
            "#hash",
            "new\nline",
            "extra.txt",
        )
    }
    assert _files(ov) == expected
    assert set(ov.json("snapshots")[0]["paths"]) == expected


def test_files_from_missing_entry_fails_before_backing_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ok", b"ok")
    ov = OV(tmp_path / "repo")
    ov.init()
    lst = tmp_path / "list"
    lst.write_text(f"{src}/ok\n{src}/gone\n")
    _failed(ov.run("backup", "--files-from", str(lst), check=False), "gone", "does not exist")
    _failed(ov.run("backup", "--files-from-verbatim", str(lst), check=False), "gone", "does not exist")
    (tmp_path / "raw").write_bytes(f"{src}/ok\0{src}/gone\0".encode())
    _failed(ov.run("backup", "--files-from-raw", str(tmp_path / "raw"), check=False), "gone", "does not exist")
    _failed(ov.run("backup", "--files-from", str(tmp_path / "no-such-list"), check=False), "no-such-list")
    (tmp_path / "unterminated").write_bytes(f"{src}/ok".encode())
    _failed(ov.run("backup", "--files-from-raw", str(tmp_path / "unterminated"), check=False), "trailing zero")
    _failed(ov.run("backup", check=False), "nothing to back up")
    assert ov.json("snapshots") == []
    assert ov.packs() == set()


def _backup_stdin(ov: OV, data: bytes, *args: str) -> tuple[dict[str, Any], int]:
    """backup --stdin fed through a pipe; returns the JSON summary and the peak RSS (KiB) of the
    CLI process, measured by a parent whose only child it is."""
    probe = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.call([sys.executable, '-m', 'orbitvault', *sys.argv[1:]])\n"
        "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe, "backup", "--stdin", *args, "--json"],
        input=data,
        env=ov.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    err = p.stderr.decode()
    assert p.returncode == 0, err
    rss = int(next(line for line in err.splitlines() if line.startswith("maxrss")).split()[1])
    return json.loads(p.stdout.decode().strip().splitlines()[-1]), rss


def test_stdin_roundtrip_streams_with_bounded_memory(tmp_path: Path) -> None:
    ov = OV(tmp_path / "repo")
    ov.init()
    small, small_rss = _backup_stdin(ov, b"hello from a pipe\n")
    assert small["files_new"] == 1 and small["total_bytes_processed"] == 18
    big_data = random.Random(7).randbytes(24 * 1024 * 1024)
    t0 = time.time()
    big, big_rss = _backup_stdin(ov, big_data, "--stdin-filename", "db/dump.sql")
    # Chunked like any file: with the test repository's 256 KiB maximum chunk, at least 96 blobs.
    assert big["data_blobs"] >= len(big_data) // (256 * 1024) and big["bytes_read"] == len(big_data)
    # Streamed, not slurped: holding the 24 MiB input would add at least that much to the peak.
    assert big_rss - small_rss < 12 * 1024, (small_rss, big_rss)

    snaps = ov.json("snapshots")
    assert [s["paths"] for s in snaps] == [["/stdin"], ["/db/dump.sql"]]
    assert "parent" not in snaps[1]
    nodes = {n["path"]: n for n in ov.json_lines("ls", "latest") if n.get("struct_type") == "node"}
    assert set(nodes) == {"/db", "/db/dump.sql"}
    f = nodes["/db/dump.sql"]
    assert f["permissions"] == "-rw-r--r--" and f["size"] == len(big_data)
    assert f["uid"] == os.getuid() and f["gid"] == os.getgid()
    assert t0 - 5 <= datetime.fromisoformat(f["mtime"]).timestamp() <= time.time() + 5, f["mtime"]  # now

    target = tmp_path / "out"
    r = ov.json("restore", "latest", "--target", str(target), "--verify")
    assert r["errors"] == 0
    restored = (target / "db" / "dump.sql").read_bytes()
    assert hashlib.sha256(restored).digest() == hashlib.sha256(big_data).digest()
    assert (target / "db" / "dump.sql").stat().st_mode & 0o777 == 0o644
    ov.run("restore", snaps[0]["id"], "--target", str(tmp_path / "out0"))
    assert (tmp_path / "out0" / "stdin").read_bytes() == b"hello from a pipe\n"

    # The same stream again dedupes entirely.
    again, _rss = _backup_stdin(ov, big_data, "--stdin-filename", "db/dump.sql")
    assert again["data_blobs"] == 0

    src = tmp_path / "src"
    write(src / "f", b"f")
    _failed(ov.run("backup", "--stdin", str(src), check=False), "--stdin")
    _failed(ov.run("backup", "--stdin", "--files-from", str(tmp_path / "x"), check=False), "--files-from")


def test_restore_and_ls_snapshot_subfolder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "sub" / "dir" / "a.txt", b"a" * 1000, mtime=1_600_000_000, mode=0o640)
    write(src / "sub" / "dir" / "deeper" / "b.txt", b"b", mtime=1_600_000_100)
    os.symlink("a.txt", src / "sub" / "dir" / "link")
    write(src / "sub" / "other.txt", b"o")
    write(src / "top.txt", b"t")
    os.utime(src / "sub" / "dir" / "deeper", (1_600_000_200, 1_600_000_200))
    ov = OV(tmp_path / "repo")
    ov.init()
    sid = ov.json("backup", str(src))["snapshot_id"]
    base = str(src.resolve())

    target = tmp_path / "t1"
    ov.run("restore", f"latest:{base}/sub/dir", "--target", str(target))
    assert manifest(target) == manifest(src / "sub" / "dir")  # exactly that subtree, at the target's root

    target2 = tmp_path / "t2"  # an id prefix, a path without the leading slash, patterns relative to it
    ov.run("restore", f"{sid[:8]}:{base.lstrip('/')}/sub/dir/", "--target", str(target2), "--exclude", "deeper")
    assert sorted(os.listdir(target2)) == ["a.txt", "link"]

    target3 = tmp_path / "t3"
    r = ov.json("restore", f"latest:{base}/sub", "--target", str(target3))
    assert r["files_restored"] == 3 and (target3 / "other.txt").read_bytes() == b"o"

    listed = ov.run("ls", f"latest:{base}/sub/dir").stdout.splitlines()
    assert listed == [f"{base}/sub/dir/{rel}" for rel in ("a.txt", "deeper", "deeper/b.txt", "link")]

    missing = tmp_path / "t4"
    _failed(ov.run("restore", f"latest:{base}/nope", "--target", str(missing), check=False), "not found", "nope")
    _failed(ov.run("restore", f"latest:{base}/top.txt", "--target", str(missing), check=False), "not a directory")
    _failed(ov.run("ls", f"latest:{base}/nope", check=False), "not found")
    assert not missing.exists()
