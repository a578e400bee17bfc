"""The drill's parts on their own: the sample tree, tree comparison, reading the gateway's log,
staging cold objects (with a fake backend), and what `gateway rebuild` prints."""

from __future__ import annotations

import io
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orbitvault.cli.drill import _parse_rebuild
from orbitvault.client.backend_orbit import RestoreEta
from orbitvault.client.cold import ColdStager, StageEvent, metadata_names
from orbitvault.client.compare import compare_trees, file_digest
from orbitvault.client.sample_tree import make_sample_tree
from orbitvault.errors import Unavailable
from orbitvault.ground.scheduled import ExecutedTransfer
from orbitvault.ground.telemetry import GatewayLog, LogFollower, parse_line
from orbitvault.grpc.node_server import KeyValueFormatter
from orbitvault.orbit.plan import Contact

# --- sample tree ------------------------------------------------------------------------------------


def _digests(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
        elif p.is_file():
            out[rel] = (file_digest(p), st.st_mode, st.st_mtime_ns)
        else:
            out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
    return out


def test_sample_tree_is_deterministic_and_has_every_kind(tmp_path: Path) -> None:
    a = make_sample_tree(tmp_path / "a", seed=3, scale=0.2)
    b = make_sample_tree(tmp_path / "b", seed=3, scale=0.2)
    assert _digests(a.root) == _digests(b.root) and a.bytes == b.bytes
    assert _digests(make_sample_tree(tmp_path / "c", seed=4, scale=0.2).root) != _digests(a.root)
    r = a.root
    assert (r / "latest.csv").is_symlink() and os.readlink(r / "latest.csv") == "data/measurements.csv"
    assert os.stat(r / "data/telemetry.bin").st_ino == os.stat(r / "data/telemetry-latest.bin").st_ino
    assert list((r / "empty-dir").iterdir()) == [] and (r / "empty.log").stat().st_size == 0
    assert (r / "keys/operator.pem").stat().st_mode & 0o777 == 0o600
    assert (r / "media/photos/pass-0001.jpg").read_bytes() == (r / "media/photos/pass-0001-copy.jpg").read_bytes()
    full = make_sample_tree(tmp_path / "full")
    assert 4_000_000 < full.bytes < 5_000_000
    with pytest.raises(FileExistsError):
        make_sample_tree(tmp_path / "full")


# --- comparing trees --------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    """A faithful copy (what a good restore makes): hard links kept, times set deepest first."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    links: dict[int, Path] = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink() and os.stat(p).st_nlink > 1:
            first = links.setdefault(os.stat(p).st_ino, p)
            if first != p:
                target = dst / p.relative_to(src)
                target.unlink()
                os.link(dst / first.relative_to(src), target)
    for p in sorted(src.rglob("*"), key=lambda q: -len(q.parts)):
        st = os.lstat(p)
        os.utime(dst / p.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def test_compare_trees_accepts_a_faithful_copy_and_names_each_difference(tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src", seed=1, scale=0.1).root
    dst = tmp_path / "dst"
    _copy(src, dst)
    ok = compare_trees(src, dst)
    assert ok.ok and ok.mismatch_count == 0 and ok.symlinks == 1 and ok.hardlink_groups == 1 and ok.files > 20

    csv = dst / "data/measurements.csv"
    data = bytearray(csv.read_bytes())
    data[100] ^= 1  # same size, one bit
    st = os.stat(csv)
    csv.write_bytes(bytes(data))
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))
    (dst / "README.md").chmod(0o600)
    (dst / "empty.log").unlink()
    (dst / "extra.txt").write_text("x")
    t = dst / "data/telemetry-latest.bin"
    blob = t.read_bytes()
    t.unlink()
    t.write_bytes(blob)  # same bytes, no longer a hard link
    os.utime(t, ns=(os.stat(src / "data/telemetry-latest.bin").st_mtime_ns,) * 2)
    res = compare_trees(src, dst)
    text = "\n".join(res.mismatches)
    assert not res.ok
    for what in (
        "data/measurements.csv: contents differ",
        "README.md: mode",
        "empty.log: missing",
        "extra.txt: in the copy only",
        "hard links not restored as one file",
    ):
        assert what in text, text
    assert compare_trees(src, tmp_path / "nowhere").ok is False


# --- the gateway's log -------------------------------------------------------------------------------


def _format(msg: str, *args: Any, name: str = "orbitvault.gateway.scheduled") -> str:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    return KeyValueFormatter().format(record)


def test_transfer_log_lines_read_back() -> None:
    oid = bytes.fromhex("ab" * 32)
    contact = Contact("Ground Station 1", "OV-11", 100.0, 700.0, 1e6, 0.01)
    ex = ExecutedTransfer(
        "restore", "downlink", "OV-11", 'Ground "Station" 1', contact, 120.5, 121.25, 121.26, (oid, 2, 5),
        0, 9, True, 9000, 8123,
    )  # fmt: skip
    lines = [
        _format("transfer executed %s", ex.log_fields()),
        _format("object durable object=%s at=%.3f", oid.hex()[:16], 1234.5),
        _format("restore ready object=%s at=%.3f expires=%.0f", oid.hex()[:16], 2000.0, 9000.0),
        _format("repair sweep rebuilt=%d failed=%d bytes=%d nodes_gone=%d backlog=%d", 7, 0, 1, 1, 0, name="x"),
        "=== 2026-11-01T00:00:00Z starting: orbitvault gateway serve",
        "Traceback (most recent call last):",
        _format("store plan items=%d transfers=%d durable_at=%s lost=%s planning_ms=%.1f", 3, 4, 5000.25, "-", 1.0),
        _format("repair sweep rebuilt=%d failed=%d bytes=%d nodes_gone=%d backlog=%d", 2, 0, 1, 0, 0, name="x"),
    ]
    assert parse_line(lines[4]) is None and parse_line(lines[5]) is None
    log = GatewayLog(e for i, line in enumerate(lines) if (e := parse_line(line, i)) is not None)
    [t] = log.transfers()
    assert (t.purpose, t.hop, t.source, t.dest) == ("restore", "downlink", "OV-11", 'Ground "Station" 1')
    assert (t.start, t.end, t.arrival, t.bytes, t.resumed, t.object) == (120.5, 121.25, 121.26, 8123, True, "abab" * 4)
    assert log.durable_at() == {"abab" * 4: 1234.5}
    assert log.restored_at() == {"abab" * 4: [2000.0]}
    assert log.shards_rebuilt() == 9 and log.shards_rebuilt(after_seq=3) == 2
    assert log.plan_after(next(log.named("object durable"))) == 5000.25
    assert log.last_seq == 7


def test_gateway_log_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert GatewayLog.read(tmp_path / "none.log").events == []
    assert LogFollower(tmp_path / "none.log").read().events == []


def test_log_follower_reads_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    follow = LogFollower(path)
    first = _format("object durable object=%s at=%.3f", "aa" * 8, 1.0)
    second = _format("object durable object=%s at=%.3f", "bb" * 8, 2.0)
    path.write_text("=== starting\n" + first + "\n" + second[:20])  # the last line still being written
    assert follow.read().durable_at() == {"aa" * 8: 1.0}
    with open(path, "a") as f:
        f.write(second[20:] + "\n")
    log = follow.read()
    assert log.durable_at() == {"aa" * 8: 1.0, "bb" * 8: 2.0}
    assert [e.seq for e in log.events] == [e.seq for e in GatewayLog.read(path).events] == [1, 2]


def test_rebuild_output_parsed() -> None:
    text = (
        "rebuilt /x/gateway: checkpoint 8, 2 tenant(s), 1 key(s), 2 bucket(s), 9 object(s) "
        "(1 newer than the checkpoint)\n"
        "nodes listed 7, unreachable 0; shards seen 61, missing 0 (queued for repair), orphans 1\n"
    )
    assert _parse_rebuild(text) == {
        "checkpoint": 8, "tenants": 2, "keys": 1, "buckets": 2, "objects": 9, "from_headers": 1,
        "nodes_listed": 7, "nodes_unreachable": 0,
    }  # fmt: skip
    assert (
        _parse_rebuild("rebuilt x: checkpoint none, 0 tenant(s), 0 key(s), 0 bucket(s), 0 object(s) (0 newer")[
            "checkpoint"
        ]
        == "none"
    )


# --- staging cold objects -----------------------------------------------------------------------------


@dataclass
class FakeColdBackend:
    """Objects become readable at `ready_at` on a clock that moves `step` per call."""

    ready_at: dict[str, int]
    now: int = 1_000
    step: int = 400
    cold: bool = True
    keep: int = 0
    calls: list[list[str]] = field(default_factory=list)

    def cold_storage(self) -> bool:
        return self.cold

    def restore_objects(self, names: Any, *, keep_for_ms: int = 7 * 86_400_000) -> RestoreEta:
        names = list(names)
        self.calls.append(names)
        self.keep = keep_for_ms
        now, self.now = self.now, self.now + self.step
        pending = tuple(n for n in names if self.ready_at[n] > now)
        done = [self.ready_at[n] for n in names if n not in pending]
        eta = max((self.ready_at[n] for n in pending), default=0)
        return RestoreEta(len(names), pending, eta, min(eta, now + 10), now, True, max(done, default=0))

    def list(self, kind: str) -> list[Any]:
        return [type("O", (), {"name": f"{kind}/{'0' * 64}"})()]

    def cached(self, name: str) -> bool:
        return name.startswith("keys/")


def test_cold_stager_reports_the_eta_and_when_objects_became_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orbitvault.client.cold._poll_s", lambda eta: 0.0)
    backend = FakeColdBackend({"a": 1_500, "b": 2_100, "c": 0})
    events: list[StageEvent] = []
    stager = ColdStager.for_backend(backend, on_event=events.append)
    assert stager is not None
    phase = stager.stage("data", ["b", "a", "c", "a"])
    assert backend.calls[0] == ["a", "b", "c"]  # once each, all asked at once
    assert backend.calls[1:] == [["a", "b"], ["a", "b"], ["b"]]  # then only what is pending
    assert (phase.objects, phase.pending, phase.requested_unix_ms, phase.eta_unix_ms) == (3, 2, 1_000, 2_100)
    assert phase.ready_unix_ms == 2_100  # when it became readable, not when the poll saw it (2_200)
    assert [e.kind for e in events] == ["requested", "waiting", "waiting", "waiting", "ready"]
    assert phase.to_json()["message_type"] == "restore_objects_ready"
    assert stager.stage("none", []).objects == 0


def test_cold_stager_only_for_cold_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ColdStager.for_backend(object()) is None  # a local backend: nothing to stage
    assert ColdStager.for_backend(FakeColdBackend({}, cold=False)) is None  # a direct-mode gateway
    monkeypatch.setattr("orbitvault.client.cold._poll_s", lambda eta: 0.0)
    stager = ColdStager(FakeColdBackend({"a": 10**9}), timeout_s=0.0)
    with pytest.raises(Unavailable, match="still not restored"):
        stager.stage("data", ["a"])
    assert metadata_names(FakeColdBackend({})) == [
        "config",
        f"snapshots/{'0' * 64}",
        f"index/{'0' * 64}",
    ]  # keys are in the cache


def test_restore_display_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from orbitvault.cli.backup import _staging_display
    from orbitvault.cli.backup_common import Ctx
    from orbitvault.client.cold import StagePhase

    ctx = Ctx(None, None, None, True, False, 0, None, False, False, 0.0)
    st = StagePhase("trees", 2, pending=1, requested_unix_ms=5, eta_unix_ms=9, simulated=True)
    with _staging_display(ctx) as show:
        show(StageEvent("requested", st, 1, 5))
        st.ready_unix_ms = 9
        show(StageEvent("ready", st, 0, 12))
    out = [line for line in capsys.readouterr().out.splitlines() if line]
    assert '"message_type": "restore_objects"' in out[0] and '"eta_unix_ms": 9' in out[0]
    assert '"message_type": "restore_objects_ready"' in out[1] and '"ready_unix_ms": 9' in out[1]
    plain = Ctx(None, None, None, False, False, 0, None, False, False, 0.0)
    buf = io.StringIO()
    with _staging_display(plain) as show, pytest.MonkeyPatch.context() as mp:
        mp.setattr("click.echo", lambda text, err=False: buf.write(text + "\n"))
        show(StageEvent("requested", st, 1, 5))
        show(StageEvent("ready", st, 0, 12))
    assert "restoring 1 of 2 object(s) (trees) from orbit: ready by" in buf.getvalue()
    assert "simulated clock" in buf.getvalue() and "readable after" in buf.getvalue()


def test_the_plan_for_an_object_is_the_first_made_after_the_executor_adopted_it() -> None:
    """The put's `object stored` line races the executor: a plan logged after it may have been
    made without the object. The first plan after `object adopted` is the one that includes it."""
    plan = "store plan items=%d transfers=%d durable_at=%s lost=%s planning_ms=%.1f"
    lines = [
        _format(plan, 1, 1, 1000.0, "-", 1.0),
        _format("object stored tenant=%s bucket=%s key=%r version=%s bytes=%d ms=%.0f", "t", "b", "k", "cd" * 8, 9, 1),
        _format(plan, 2, 2, 2000.0, "-", 1.0),  # planned before the object reached the executor
        _format("object adopted object=%s", "cd" * 8),
        _format(plan, 3, 3, 3090.0, "-", 1.0),
    ]
    log = GatewayLog(e for i, line in enumerate(lines) if (e := parse_line(line, i)) is not None)
    assert log.plan_after(next(log.named("object stored"))) == 3090.0


def test_the_plan_for_a_backup_is_made_after_its_locks_left_the_backlog() -> None:
    """A backup deletes its lock last (and a long one has replaced it meanwhile); plans made
    while a lock was still queued predict the backlog with it, which may need one more pass."""
    plan = "store plan items=%d transfers=%d durable_at=%s lost=%s planning_ms=%.1f"
    stored = "object stored tenant=%s bucket=%s key=%r version=%s bytes=%d ms=%.0f"
    lines = [
        _format(stored, "t", "b", "locks/1", "c1" * 8, 9, 1),
        _format("object adopted object=%s", "c1" * 8),
        _format(stored, "t", "b", "locks/2", "c2" * 8, 9, 1),  # the refreshed lock
        _format("object adopted object=%s", "c2" * 8),
        _format(stored, "t", "b", "locks/3", "c3" * 8, 9, 1),  # deleted before the executor saw it
        _format("object forgotten object=%s", "c1" * 8),
        _format(stored, "t", "b", "s", "ab" * 8, 9, 1),
        _format("object adopted object=%s", "ab" * 8),
        _format(plan, 9, 9, 4983.0, "-", 1.0),  # the refreshed lock still queued
    ]
    log = GatewayLog(e for i, line in enumerate(lines) if (e := parse_line(line, i)) is not None)
    snap = next(e for e in log.named("object stored") if e.fields.get("key") == "s")
    assert log.plan_after(snap) == 4983.0
    assert log.settled("locks/") is None  # the drill waits: locks/2 is still in the backlog
    lines += [
        _format("object forgotten object=%s", "c2" * 8),
        _format(plan, 8, 8, 3893.0, "-", 1.0),
    ]
    log = GatewayLog(e for i, line in enumerate(lines) if (e := parse_line(line, i)) is not None)
    assert log.settled("locks/") == 9
    assert log.plan_after(snap, settled=log.settled("locks/")) == 3893.0
    assert log.settled("nothing/") == -1


def test_a_lock_that_reached_orbit_before_its_delete_has_left_the_backlog() -> None:
    """On a loaded machine a backup can run so long that simulated time carries its lock to
    DURABLE; it leaves the backlog then, and is never `forgotten`."""
    plan = "store plan items=%d transfers=%d durable_at=%s lost=%s planning_ms=%.1f"
    stored = "object stored tenant=%s bucket=%s key=%r version=%s bytes=%d ms=%.0f"
    lines = [
        _format(stored, "t", "b", "locks/1", "c1" * 8, 9, 1),
        _format("object adopted object=%s", "c1" * 8),
        _format(plan, 1, 1, 1000.0, "-", 1.0),
        _format("object durable object=%s at=%s", "c1" * 8, 1000.0),
        _format("object adopted object=%s", "ab" * 8),
        _format(stored, "t", "b", "s", "ab" * 8, 9, 1),
        _format(plan, 2, 2, 2000.0, "-", 1.0),
    ]
    log = GatewayLog(e for i, line in enumerate(lines) if (e := parse_line(line, i)) is not None)
    assert log.settled("locks/") == 3
    snap = next(e for e in log.named("object stored") if e.fields.get("key") == "s")
    assert log.plan_after(snap, settled=log.settled("locks/")) == 2000.0
