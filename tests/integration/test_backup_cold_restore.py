"""`orbitvault restore` from a gateway in scheduled mode: objects only in orbit are restored from
orbit first (RestoreObject, three rounds), with the ETA shown, then the files as usual.

A real gateway on a simulated clock and 8 real nodes on loopback (the scaled sky of
`test_gateway_scheduled`: slow links, so downlinks take passes), the backup CLI as a subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.test_backup_support import OV
from tests.integration.test_gateway_scheduled import sky, start  # noqa: F401  (fixture)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_restore_stages_cold_objects_with_eta(sky: Any, tmp_path: Path) -> None:  # noqa: F811
    server, client = start(sky)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"cold storage in orbit\n" * 300)
    (src / "r.bin").write_bytes(os.urandom(9000))
    ov = OV(tmp_path / "unused")
    ov.env.update(
        ORBITVAULT_REPOSITORY=f"orbit://{server.address}/data",
        ORBITVAULT_API_KEY=server.token,
        ORBITVAULT_INSECURE="1",
        ORBITVAULT_CACHE_DIR=str(tmp_path / "cache"),
    )
    ov.run("init", "--kdf-time", "1", "--kdf-memory", "8192")
    ov.run("backup", str(src))
    keys = [o.key for o in client.list("data") if not o.key.startswith("locks/")]
    for key in keys:
        client.wait_durable("data", key, timeout_s=120, poll_s=0.05)
    # DURABLE is committed a moment before the executor drops the spooled copy: let it finish.
    assert server.gateway.scheduler.wait_idle(60)
    assert not any(server.gateway.scheduler.spool.objects())  # only in orbit now: cold

    (tmp_path / "cache").rename(tmp_path / "old-cache")  # a fresh client: metadata is cold too
    target = tmp_path / "restored"
    out = ov.run("restore", "latest", "--target", str(target), "--json").stdout.splitlines()
    lines = [json.loads(line) for line in out]
    asked = {d["phase"]: d for d in lines if d["message_type"] == "restore_objects"}
    ready = {d["phase"]: d for d in lines if d["message_type"] == "restore_objects_ready"}
    assert list(asked) == list(ready) == ["metadata", "trees", "data"]
    for phase, d in asked.items():
        assert d["pending"] == d["objects"] > 0 and d["simulated_clock"]
        assert d["gateway_time_unix_ms"] <= d["eta_bound_unix_ms"] <= d["eta_unix_ms"]
        # The plan held: the objects were readable when the gateway said they would be.
        assert abs(ready[phase]["ready_unix_ms"] - d["eta_unix_ms"]) <= 1, phase
    assert asked["metadata"]["objects"] == 4  # config, key, snapshot, index
    assert lines[-1]["message_type"] == "summary" and lines[-1]["errors"] == 0
    assert _tree(target / src.relative_to("/")) == _tree(src)

    # Restored copies stay readable for a while: a second restore needs no round trip to orbit,
    # and a terminal-less, non-JSON restore says nothing about staging then.
    again = ov.run("restore", "latest", "--target", str(tmp_path / "again"))
    assert "from orbit" not in again.stderr
    assert _tree(tmp_path / "again" / src.relative_to("/")) == _tree(src)


def test_restore_from_direct_gateway_stages_nothing(gw: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"direct\n" * 100)
    ov = OV(tmp_path / "unused")
    ov.env.update(
        ORBITVAULT_REPOSITORY=f"orbit://{gw.server.address}/backups",
        ORBITVAULT_API_KEY=gw.token,
        ORBITVAULT_INSECURE="1",
        ORBITVAULT_CACHE_DIR=str(tmp_path / "cache"),
    )
    ov.run("init", "--kdf-time", "1", "--kdf-memory", "8192")
    ov.run("backup", str(src))
    out = ov.run("restore", "latest", "--target", str(tmp_path / "r"), "--json").stdout.splitlines()
    assert [json.loads(line)["message_type"] for line in out] == ["summary"]
