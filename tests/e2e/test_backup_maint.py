"""forget, prune, tag, key, find, stats, cat through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.test_backup_support import OV, manifest, restored_root, write

TIMES = [
    "2024-01-01 10:00:00",
    "2024-01-01 18:00:00",
    "2024-01-02 09:00:00",
    "2024-01-08 09:00:00",
    "2024-01-09 09:00:00",
    "2024-02-01 09:00:00",
]


def _snapshots_at_times(tmp_path: Path) -> tuple[OV, Path, dict[str, str]]:
    src = tmp_path / "src"
    ov = OV(tmp_path / "repo")
    ov.init()
    ids = {}
    for i, t in enumerate(TIMES):
        write(src / f"file{i}", os.urandom(200_000))
        ids[t] = ov.json("backup", str(src), "--time", t)["snapshot_id"]
    return ov, src, ids


def test_forget_policy_then_prune(tmp_path: Path) -> None:
    ov, src, ids = _snapshots_at_times(tmp_path)
    # Newest first: 02-01 (new day, ISO week 5, month 2), 01-09 (new day, week 2, month 1: the
    # daily and weekly counts are used up), 01-08 (same week and month as 01-09: removed), 01-02,
    # 01-01 18:00 (same month: removed), 01-01 10:00: the oldest, kept while monthly has a count.
    groups = ov.json("forget", "--keep-daily", "2", "--keep-weekly", "2", "--keep-monthly", "3", "--dry-run")
    assert len(groups) == 1
    kept = {s["id"] for s in groups[0]["keep"]}
    assert kept == {ids[t] for t in ("2024-02-01 09:00:00", "2024-01-09 09:00:00", "2024-01-01 10:00:00")}
    reasons = {r["snapshot"]["id"]: r["matches"] for r in groups[0]["reasons"]}
    assert reasons[ids["2024-01-01 10:00:00"]] == ["oldest monthly snapshot"]
    assert len(ov.json("snapshots")) == 6  # dry run

    size_before = sum(p.stat().st_size for p in (ov.repo / "data").glob("*/*"))
    ov.run("forget", "--keep-daily", "2", "--keep-weekly", "2", "--keep-monthly", "3", "--prune", "--max-unused", "0")
    remaining = ov.json("snapshots")
    assert {s["id"] for s in remaining} == kept
    size_after = sum(p.stat().st_size for p in (ov.repo / "data").glob("*/*"))
    assert size_after <= size_before  # data of removed snapshots is still used by later ones
    assert ov.json("check", "--read-data")["num_errors"] == 0
    target = tmp_path / "t"
    ov.run("restore", "latest", "--target", str(target), "--verify")
    assert manifest(restored_root(target, src)) == manifest(src)


def test_prune_repacks_partly_used_packs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"f{i}", os.urandom(150_000))  # several files per 512 KiB pack
    ov = OV(tmp_path / "repo")
    ov.init()
    first = ov.json("backup", str(src))["snapshot_id"]
    for i in range(0, 6, 2):
        (src / f"f{i}").unlink()
    ov.json("backup", str(src))
    ov.run("forget", first)
    plan = ov.json("prune", "--dry-run", "--max-unused", "0")
    assert plan["packs_repack"] >= 1 and plan["unused_size"] > 0
    ov.run("prune", "--max-unused", "0")
    after = ov.json("prune", "--dry-run", "--max-unused", "0")
    assert after["unused_size"] == 0 and after["packs_repack"] == 0 and after["packs_remove"] == 0
    assert ov.json("check", "--read-data")["num_errors"] == 0
    target = tmp_path / "t"
    ov.run("restore", "latest", "--target", str(target), "--verify")
    assert manifest(restored_root(target, src)) == manifest(src)


def test_forget_by_id_tag_find_stats_cat(tmp_path: Path) -> None:
    ov, src, ids = _snapshots_at_times(tmp_path)
    first = ids[TIMES[0]]
    changed = ov.json("tag", "--add", "keep,gold", first[:8])["changed_snapshots"]
    assert len(changed) == 1 and changed[0]["old_snapshot_id"] == first
    new_id = changed[0]["new_snapshot_id"]
    tagged = ov.json("snapshots", "--tag", "gold")
    assert [s["id"] for s in tagged] == [new_id] and tagged[0]["tags"] == ["gold", "keep"]
    assert tagged[0]["original"] == first
    ov.json("tag", "--remove", "gold", new_id)
    assert ov.json("snapshots", "--tag", "keep")[0]["tags"] == ["keep"]
    assert ov.json("forget", "--keep-last", "1", "--keep-tag", "keep", "--dry-run")[0]["remove"]

    found = ov.json("find", "file3")
    assert {f["snapshot"] for f in found} == {ids[t] for t in TIMES[3:]}
    assert ov.json("stats")["total_file_count"] == sum(range(1, 7)) + 0
    raw = ov.json("stats", "--mode", "raw-data")
    assert raw["total_size"] >= 6 * 200_000

    cfg = json.loads(ov.run("cat", "config").stdout)
    assert cfg["chunker"]["avg_size"] == 65536 and cfg["version"] == 1
    snap = json.loads(ov.run("cat", "snapshot", ids[TIMES[1]]).stdout)
    assert snap["paths"] == [str(src.resolve())]
    index_id = next((ov.repo / "index").iterdir()).name
    idx = json.loads(ov.run("cat", "index", index_id[:10]).stdout)
    assert idx["packs"] and all(len(b["id"]) == 64 for p in idx["packs"] for b in p["blobs"])

    ov.run("forget", ids[TIMES[2]][:10])
    assert ids[TIMES[2]] not in {s["id"] for s in ov.json("snapshots")}


def test_keys_add_list_passwd_remove(tmp_path: Path) -> None:
    ov = OV(tmp_path / "repo")
    ov.init()
    write(tmp_path / "pw2", b"second password\n")
    write(tmp_path / "pw3", b"third password\n")
    added = ov.json("key", "add", "--new-password-file", str(tmp_path / "pw2"))["id"]
    keys = ov.json("key", "list")
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    # The second password opens the repository.
    assert ov.run("snapshots", env={"ORBITVAULT_PASSWORD": "second password"}).returncode == 0
    # Change the second key's password: the old one stops working.
    ov.run(
        "key", "passwd", "--new-password-file", str(tmp_path / "pw3"), env={"ORBITVAULT_PASSWORD": "second password"}
    )
    assert ov.run("snapshots", check=False, env={"ORBITVAULT_PASSWORD": "second password"}).returncode == 12
    assert ov.run("snapshots", env={"ORBITVAULT_PASSWORD": "third password"}).returncode == 0
    assert added not in {k["id"] for k in ov.json("key", "list")}
    # Remove the first key using the third password; the current key cannot be removed.
    first = next(k["id"] for k in ov.json("key", "list") if k["current"])
    assert ov.run("key", "remove", first[:8], check=False).returncode == 1
    ov.run("key", "remove", first[:8], env={"ORBITVAULT_PASSWORD": "third password"})
    assert ov.run("snapshots", check=False).returncode == 12
