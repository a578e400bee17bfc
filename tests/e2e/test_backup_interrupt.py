"""An interrupted backup (kill -9 halfway) resumes: stored packs are reused, nothing is stored twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.test_backup_support import OV, manifest, restored_root, write


def _index_blob_ids(ov: OV) -> list[str]:
    ids = []
    for p in (ov.repo / "index").iterdir():
        doc = json.loads(ov.run("cat", "index", p.name).stdout)
        for pack in doc["packs"]:
            ids += [b["id"] for b in pack["blobs"]]
    return ids


def _kill_once_stored(ov: OV, p: subprocess.Popen[str], *, packs: int) -> None:
    """kill -9 a running backup once it has stored `packs` packs."""
    deadline = time.monotonic() + 60
    while len(ov.packs()) < packs and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the backup finished before it could be interrupted"


def test_killed_backup_resumes_without_storing_anything_twice(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"f{i:02}.bin", os.urandom(2 * 1024 * 1024))
    ov = OV(tmp_path / "repo")
    ov.init()

    # 24 MiB at 3 MiB/s: kill once a handful of packs are stored.
    _kill_once_stored(ov, ov.popen("backup", str(src), "--limit-upload", "3072"), packs=10)
    stored_before = ov.packs()
    assert len(stored_before) >= 10
    assert ov.json("snapshots") == []

    s = ov.json("backup", str(src))
    assert s["errors"] == 0 and s["snapshot_id"]
    assert s["packs_recovered"] == len(stored_before)
    # What the first run stored is not stored again: the second run adds only the rest.
    assert s["data_added"] < 24 * 1024 * 1024 - 8 * 512 * 1024
    ids = _index_blob_ids(ov)
    assert len(ids) == len(set(ids)), "a blob was stored twice"
    assert stored_before <= ov.packs()

    chk = ov.json("check", "--read-data")
    assert chk["num_errors"] == 0 and not any("not referenced" in h for h in chk["hints"])
    target = tmp_path / "t"
    r = ov.json("restore", "latest", "--target", str(target), "--verify")
    assert r["errors"] == 0
    assert manifest(restored_root(target, src)) == manifest(src)


def _reader_processes() -> list[str]:
    """Reader processes anywhere on the machine whose stdin is closed are gone within moments."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"orbitvault.client.readers" in (proc / "cmdline").read_bytes():
                    out.append(proc.name)
            except OSError:
                continue
    return out


def test_killed_backup_with_reader_processes_leaves_none_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3000):  # small files: scanned and sealed by the reader processes
        write(src / f"d{i % 60:02}" / f"f{i:04}", os.urandom(8 * 1024))
    ov = OV(tmp_path / "repo")
    ov.init()
    before = set(_reader_processes())

    _kill_once_stored(ov, ov.popen("backup", str(src), "--read-processes", "2", "--limit-upload", "3072"), packs=6)
    stored_before = ov.packs()
    deadline = time.monotonic() + 10
    while set(_reader_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_reader_processes()) - before == set(), "a reader outlived its backup"

    s = ov.json("backup", str(src), "--read-processes", "2")
    assert s["errors"] == 0 and s["files_new"] == 3000
    assert s["packs_recovered"] == len(stored_before)
    ids = _index_blob_ids(ov)
    assert len(ids) == len(set(ids)), "a blob was stored twice"
    target = tmp_path / "t"
    r = ov.json("restore", "latest", "--target", str(target), "--verify")
    assert r["errors"] == 0
    assert manifest(restored_root(target, src)) == manifest(src)
