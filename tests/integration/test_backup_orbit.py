"""The backup CLI against an `orbit://` repository: a real gateway and six nodes on loopback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.e2e.test_backup_support import OV


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_backup_restore_check_through_the_gateway(gw: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"hello orbit\n" * 5000)
    (src / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "empty").mkdir()
    ov = OV(tmp_path / "unused")
    ov.env.update(
        ORBITVAULT_REPOSITORY=f"orbit://{gw.server.address}/backups",
        ORBITVAULT_API_KEY=gw.token,
        ORBITVAULT_INSECURE="1",
        ORBITVAULT_CACHE_DIR=str(tmp_path / "cache"),
    )
    ov.init()
    first = ov.json("backup", str(src))
    assert first["files_new"] == 2
    again = ov.json("backup", str(src))
    assert again["files_unmodified"] == 2 and again["files_read"] == 0  # nothing re-read, nothing re-sent
    snaps = ov.json("snapshots")
    assert len(snaps) == 2
    target = tmp_path / "restored"
    ov.run("restore", "latest", "--target", str(target))
    assert _tree(target / src.relative_to("/")) == _tree(src)
    checked = ov.json("check", "--read-data")  # exits non-zero (and fails here) on any error
    assert checked["errors"] == [] and checked["packs_read"] > 0
    # Direct mode: every object is durable once acknowledged.
    state = ov.json("status", "latest")
    assert state["state"] == "durable" and state["objects"] >= 5
    assert set(state["objects_by_state"]) == {"durable"}
    local = OV(tmp_path / "local-repo")
    local.init()
    refused = local.run("status", "latest", check=False)
    assert refused.returncode == 1 and "needs an orbit:// repository" in refused.stderr
    # Everything the repository wrote is an ordinary object in the bucket: config, keys, packs...
    keys = {o.key.split("/", 1)[0] for o in gw.client.list("backups")}
    assert {"config", "keys", "data", "index", "snapshots"} <= keys
    # The metadata cache is used and self-verifying; cached trees are authenticated on every use.
    assert any((tmp_path / "cache").rglob("*"))
    trees = [p for p in (tmp_path / "cache").rglob("trees/*/*") if not p.name.startswith(".")]
    assert trees, "restore and check should have cached the snapshot's trees"
    originals = {p: p.read_bytes() for p in trees}
    for p, data in originals.items():
        p.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # damage every cached tree
    again = tmp_path / "restored-again"
    ov.run("restore", "latest", "--target", str(again))  # refetched, not trusted
    assert _tree(again / src.relative_to("/")) == _tree(src)
    assert all(p.read_bytes() == data for p, data in originals.items())  # and rewritten whole
