"""The audit log: a keyed hash chain that names the first modified, deleted or reordered line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from click.testing import CliRunner

from orbitvault.errors import PermissionDenied, Unavailable
from orbitvault.ground import audit
from orbitvault.ground.model import KeyMode
from tests.unit.ground_fakes import Env

KEY = bytes(range(32))


class Head:
    """An in-memory HeadStore."""

    def __init__(self) -> None:
        self.meta: dict[str, bytes] = {}

    def get_meta(self, key: str) -> bytes | None:
        return self.meta.get(key)

    def put_meta(self, key: str, value: bytes) -> None:
        self.meta[key] = value


def _log(tmp_path: Path, n: int = 6) -> tuple[Path, Head]:
    head = Head()
    log = audit.AuditLog(tmp_path / "audit.log", KEY, head=head)
    for i in range(n):
        log.append("object.delete", target=f"b/k{i}", principal="client:alice", tenant="acme", key_id="ab" * 8)
    log.close()
    return tmp_path / "audit.log", head


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _verify(path: Path, head: Head) -> audit.VerifyReport:
    return audit.verify(path, KEY, head=audit.read_head(head))


def test_an_intact_chain_verifies(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    report = _verify(path, head)
    assert report.ok and report.entries == 6 and report.head_seq == 6
    first = json.loads(_lines(path)[0])
    assert first["prev"] == audit.GENESIS and first["seq"] == 1
    assert (
        first["hash"]
        == blake3.blake3(audit.canonical({k: v for k, v in first.items() if k != "hash"}), key=KEY).hexdigest()
    )
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_modified_entry_is_named(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[2])
    entry["outcome"] = "denied"  # rewrite history: the delete "never happened"
    lines[2] = audit.canonical(entry) + b"\n"
    path.write_bytes(b"".join(lines))
    report = _verify(path, head)
    assert not report.ok and report.first_bad_line == 3 and "modified" in report.problem


def test_a_reforged_hash_without_the_master_key_is_named(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[3])
    entry["principal"] = "client:bob"
    entry["hash"] = audit.entry_hash(os.urandom(32), entry)  # the attacker's own key
    lines[3] = audit.canonical(entry) + b"\n"
    path.write_bytes(b"".join(lines))
    report = _verify(path, head)
    assert (report.ok, report.first_bad_line) == (False, 4)


def test_whitespace_edits_are_edits(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    lines = _lines(path)
    lines[1] = lines[1].replace(b'","', b'", "', 1)
    path.write_bytes(b"".join(lines))
    report = _verify(path, head)
    assert report.first_bad_line == 2 and "edited" in report.problem


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    report = _verify(path, head)
    assert not report.ok and report.first_bad_line == 2 and "deleted" in report.problem


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    report = _verify(path, head)
    assert not report.ok and report.first_bad_line == 4


def test_entries_cut_off_the_end_are_caught_by_the_head(tmp_path: Path) -> None:
    path, head = _log(tmp_path)
    path.write_bytes(b"".join(_lines(path)[:4]))
    assert audit.verify(path, KEY).ok  # the chain alone cannot tell ...
    report = _verify(path, head)  # ... the head kept in the catalog can
    assert not report.ok and report.first_bad_line == 5 and "cut off the end" in report.problem
    path.unlink()
    assert _verify(path, head).problem.startswith("the audit log")


def test_a_torn_last_line_is_cut_and_recorded(tmp_path: Path) -> None:
    path, head = _log(tmp_path, 3)
    with open(path, "ab") as f:
        f.write(b'{"action":"object.del')  # a crash mid-write
    report = _verify(path, head)
    assert report.first_bad_line == 4 and "torn" in report.problem
    log = audit.AuditLog(path, KEY, head=head)
    log.append("bucket.create", target="b")
    log.close()
    report = _verify(path, head)
    assert report.ok and report.entries == 5
    torn = json.loads(_lines(path)[3])
    assert torn["action"] == "audit.torn_tail" and torn["detail"]["bytes"] == 21


def test_two_writers_share_one_chain(tmp_path: Path) -> None:
    """The server and an admin CLI process append to the same file: flock keeps one chain."""
    head = Head()
    a = audit.AuditLog(tmp_path / "audit.log", KEY, head=head)
    b = audit.AuditLog(tmp_path / "audit.log", KEY, head=head)
    for i in range(10):
        (a if i % 3 else b).append("key.create", target=str(i))
    script = (
        "import sys; from orbitvault.ground import audit;"
        "log = audit.AuditLog(sys.argv[1], bytes(range(32)));"
        "[log.append('tenant.create', target=str(i)) for i in range(20)]"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "audit.log")])
    for i in range(20):
        a.append("bucket.create", target=str(i))
    assert proc.wait(60) == 0
    a.append("bucket.delete")
    a.close()
    b.close()
    report = audit.verify(tmp_path / "audit.log", KEY, head=audit.read_head(head))
    assert report.ok and report.entries == 51, report


# --- wired into the gateway facade --------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def _entries(env: Env) -> list[dict]:
    return [json.loads(line) for line in env.config.audit_path.read_bytes().splitlines()]


def test_the_facade_records_every_mutating_call(env: Env) -> None:
    from orbitvault.ground.model import Retention, RetentionMode

    gw = env.gw
    p = gw.authenticate(env.key.token, client="client:alice")
    env.put("a", b"x" * 1000)
    gw.put_object(p, "data", "b", [b"hello"])
    until = int(env.clock.now() * 1000) + 3_600_000
    gw.set_retention(p, "data", "b", Retention(RetentionMode.GOVERNANCE, until))
    gw.set_legal_hold(p, "data", "b", True)
    gw.set_legal_hold(p, "data", "b", False)
    gw.delete_object(p, "data", "b", bypass_governance=True)
    gw.create_bucket(p, "tmp", env.geometry)
    gw.delete_bucket(p, "tmp")
    ro = gw.create_api_key("acme", KeyMode.READ_ONLY, actor="cli:ops@ground")
    gw.delete_api_key(ro.key_id, actor="cli:ops@ground")
    got = [(e["action"], e["target"], e["outcome"]) for e in _entries(env)]
    assert got == [
        ("tenant.create", "acme", "ok"),
        ("key.create", "acme", "ok"),
        ("bucket.create", "data", "ok"),
        ("object.put", "data/a", "ok"),
        ("object.put", "data/b", "ok"),
        ("object.retention", "data/b", "ok"),
        ("object.legal_hold", "data/b", "ok"),
        ("object.legal_hold", "data/b", "ok"),
        ("object.delete", "data/b", "ok"),
        ("bucket.create", "tmp", "ok"),
        ("bucket.delete", "tmp", "ok"),
        ("key.create", "acme", "ok"),
        ("key.delete", ro.key_id, "ok"),
    ]
    delete = _entries(env)[8]
    assert delete["principal"] == "client:alice" and delete["tenant"] == "acme" and delete["key_id"] == env.key.key_id
    assert delete["detail"]["bypass_governance"] is True and delete["detail"]["bytes"] == 5
    assert _entries(env)[-1]["principal"] == "cli:ops@ground" and _entries(env)[-1]["tenant"] == "acme"
    assert audit.verify(env.config.audit_path, env.master.derive("audit"), head=audit.read_head(gw.catalog)).ok


def test_a_stolen_append_only_key_trying_to_delete_is_refused_and_recorded(env: Env) -> None:
    env.put("ledger", b"do not delete")
    stolen = env.gw.authenticate(env.gw.create_api_key("acme", KeyMode.APPEND_ONLY).token, client="ipv4:6.6.6.6:1")
    with pytest.raises(PermissionDenied, match="append-only"):
        env.gw.delete_object(stolen, "data", "ledger")
    with pytest.raises(PermissionDenied):
        env.gw.put_object(stolen, "data", "ledger", [b"overwritten"])
    with pytest.raises(PermissionDenied):
        env.gw.delete_bucket(stolen, "data")
    assert env.get("ledger") == b"do not delete"
    denied = [e for e in _entries(env) if e["outcome"] == "denied"]
    assert [e["action"] for e in denied] == ["object.delete", "object.put", "bucket.delete"]
    assert all(e["status"] == "PERMISSION_DENIED" and e["principal"] == "ipv4:6.6.6.6:1" for e in denied)
    assert "append-only" in denied[0]["detail"]["reason"]


def test_the_system_tenants_checkpoints_are_not_calls(env: Env) -> None:
    before = len(_entries(env))
    env.gw.checkpoint()
    assert len(_entries(env)) == before


def test_mutating_calls_fail_closed_while_the_log_cannot_be_written(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd == env.gw.audit._fd:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "write", full)
    env.put("first", b"stored, but its record could not be written")
    with pytest.raises(Unavailable, match="audit log"):
        env.put("second", b"refused")
    assert env.get("first")  # reads go on
    monkeypatch.setattr(audit.os, "write", real_write)
    env.put("third", b"accepted again")
    actions = [e["action"] for e in _entries(env)]
    assert actions[-2:] == ["audit.recovered", "object.put"]
    assert env.gw.audit.failures == 2


def test_cli_verify_names_the_first_bad_line(env: Env, tmp_path: Path) -> None:
    from orbitvault.cli import cli

    key_file = tmp_path / "master.key"
    env.master.write_file(key_file)
    config = tmp_path / "gw.toml"
    config.write_text(f'state_dir = "{env.config.state_dir}"\nmaster_key_file = "{key_file}"\nsegment_size = 8192\n')
    for i in range(3):
        env.put(f"o{i}", b"x")
    env.gw.delete_object(env.p, "data", "o1")
    env.gw.close()  # LMDB opens an environment once per process; the CLI opens it itself
    runner = CliRunner()
    ok = runner.invoke(cli, ["gateway", "audit", "verify", "--config", str(config)])
    assert ok.exit_code == 0 and "hash chain intact" in ok.output, ok.output
    shown = runner.invoke(cli, ["gateway", "audit", "show", "--config", str(config), "--last", "1"])
    assert json.loads(shown.output)["action"] == "object.delete"
    path = env.config.audit_path
    lines = _lines(path)
    del lines[-1]  # hide the delete
    path.write_bytes(b"".join(lines))
    bad = runner.invoke(cli, ["gateway", "audit", "verify", "--config", str(config)])
    assert bad.exit_code == 1 and f"line {len(lines) + 1}" in bad.output and "cut off" in bad.output
