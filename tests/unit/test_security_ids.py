"""Intrusion detection and per-tenant rate limits: each signal, its alert in the audit log, metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orbitvault.errors import NotFound, ResourceExhausted, Unauthenticated
from orbitvault.ground import ids
from orbitvault.ground.ids import IdsConfig, IntrusionDetector, Sampler
from orbitvault.ground.model import KeyMode
from tests.unit.ground_fakes import Env

KiB = 1024
HOUR = 3600.0


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _detector(tmp_path: Path | None = None, **kw: Any) -> tuple[IntrusionDetector, list[ids.Alert], Clock]:
    alerts: list[ids.Alert] = []
    clock = Clock()
    cfg = IdsConfig(**{"rate_per_s": 0.0, **kw})
    det = IntrusionDetector(
        cfg, alerts.append, clock=clock, state_path=tmp_path / "ids.json" if tmp_path else None, monotonic=clock
    )
    return det, alerts, clock


def _kinds(alerts: list[ids.Alert]) -> list[str]:
    return [a.kind for a in alerts]


def text(n: int, seed: int = 0) -> bytes:
    words = [b"orbit", b"vault", b"backup", b"ground", b"station", b"shard", b"%d" % seed]
    out = bytearray()
    i = seed
    while len(out) < n:
        out += words[i % len(words)] + b" "
        i = (i * 7 + 3) % 1000
    return bytes(out[:n])


# --- failed authentication and mass deletes ----------------------------------------------------------


def test_failed_auth_burst_per_source_and_per_key_once_per_cooldown() -> None:
    det, alerts, clock = _detector(auth_failures=10, window_s=60.0, cooldown_s=600.0)
    for _ in range(9):
        det.auth_failed(source="6.6.6.6", key_id="aa" * 8)
        clock.t += 1
    assert alerts == []
    det.auth_failed(source="6.6.6.6", key_id="aa" * 8)
    assert sorted(a.subject for a in alerts) == ["key:" + "aa" * 8, "source:6.6.6.6"]
    for _ in range(50):
        det.auth_failed(source="6.6.6.6")
    assert len(alerts) == 2  # the cooldown: one alert per subject and kind
    assert det.snapshot()["alerts"] == {"auth.failed_burst": 2} and det.snapshot()["auth_failures"] == 60


def test_slow_failures_are_no_burst() -> None:
    det, alerts, clock = _detector(auth_failures=10, window_s=60.0)
    for _ in range(100):
        det.auth_failed(source="10.0.0.1")
        clock.t += 30  # two a minute: a typo, not an attack
    assert alerts == []


def test_mass_delete() -> None:
    det, alerts, _clock = _detector(mass_deletes=20, window_s=60.0)
    for _ in range(19):
        det.delete_attempt("acme", "k1")
    assert alerts == []
    det.delete_attempt("acme", "k1")
    assert _kinds(alerts) == ["delete.mass"] and alerts[0].detail["deletes"] == 20


# --- reads -----------------------------------------------------------------------------------------------


def test_a_key_that_never_read_suddenly_reads_much() -> None:
    det, alerts, _clock = _detector(read_floor_bytes=10 * KiB * KiB, read_floor_calls=1000, baseline_window_s=HOUR)
    for _ in range(9):
        det.read("acme", "backup-key", KiB * KiB)
    assert alerts == []
    det.read("acme", "backup-key", KiB * KiB)
    assert _kinds(alerts) == ["read.unusual_key"] and alerts[0].subject == "key:backup-key"


def test_a_read_spike_against_a_keys_usual_volume() -> None:
    det, alerts, clock = _detector(read_floor_bytes=KiB * KiB, read_factor=10.0, baseline_window_s=HOUR)
    for _ in range(4):  # four ordinary hours of 512 KiB each
        det.read("acme", "k", 512 * KiB)
        clock.t += HOUR
    assert alerts == []
    for _ in range(9):
        det.read("acme", "k", 512 * KiB)
    assert alerts == []  # 4.5 MiB < 10 x usual
    det.read("acme", "k", 512 * KiB)
    assert _kinds(alerts) == ["read.spike"]


# --- uploads: ransomware signs ------------------------------------------------------------------------


def _upload(det: IntrusionDetector, data: bytes, meta: dict[str, str] | None = None, tenant: str = "acme") -> None:
    s = Sampler([data[i : i + 100_000] for i in range(0, len(data), 100_000)])
    n = sum(len(c) for c in s)
    det.uploaded(tenant, "k", n, *s.finish(), meta or {})


def test_entropy_jump_for_plaintext_clients() -> None:
    det, alerts, clock = _detector(entropy_min_bytes=128 * KiB, baseline_window_s=HOUR, upload_floor_bytes=1 << 40)
    for h in range(4):  # documents that compress
        for i in range(4):
            _upload(det, text(200 * KiB, h * 10 + i))
        clock.t += HOUR
    assert alerts == []
    for _ in range(4):  # the same tenant's new data no longer compresses: encrypted by someone
        _upload(det, os.urandom(200 * KiB))
    assert _kinds(alerts) == ["upload.entropy_jump"]
    assert alerts[0].detail["incompressible"] >= 0.9 and alerts[0].detail["usual"] <= 0.1


def test_end_to_end_encrypted_backups_leave_the_entropy_signal_silent() -> None:
    """What the gateway cannot see it does not pretend to: ciphertext from the start is the baseline."""
    det, alerts, clock = _detector(entropy_min_bytes=128 * KiB, baseline_window_s=HOUR, upload_floor_bytes=1 << 40)
    for _ in range(6):
        for _ in range(4):
            _upload(det, os.urandom(200 * KiB))
        clock.t += HOUR
    assert alerts == []


def test_volume_jump_shows_dedupe_collapse_even_through_ciphertext() -> None:
    det, alerts, clock = _detector(upload_floor_bytes=KiB * KiB, upload_factor=10.0, baseline_window_s=HOUR)
    for _ in range(4):  # daily incremental backups: little new data
        _upload(det, os.urandom(200 * KiB))
        clock.t += HOUR
    assert alerts == []
    for _ in range(10):  # everything changed: the whole tree is new to the deduplicator
        _upload(det, os.urandom(200 * KiB))
    assert _kinds(alerts) == ["upload.volume_jump"]


def test_client_reported_dedupe_and_compression_collapse() -> None:
    det, alerts, _clock = _detector()

    def report(scanned: int, new: int, stored: int) -> None:
        meta = {"ov-backup-scanned-bytes": str(scanned), "ov-backup-new-bytes": str(new)}
        meta["ov-backup-stored-bytes"] = str(stored)
        _upload(det, os.urandom(1000), meta)

    for _ in range(4):
        report(10_000_000, 200_000, 80_000)  # 2% new, compresses 2.5x
    assert alerts == []
    report(10_000_000, 9_800_000, 9_790_000)  # 98% new and incompressible
    assert sorted(_kinds(alerts)) == ["backup.compression_collapse", "backup.dedupe_collapse"]
    for bad in (
        {"ov-backup-scanned-bytes": "x"},
        {"ov-backup-scanned-bytes": "nan"},
        {"ov-backup-scanned-bytes": "-1"},
    ):
        _upload(det, b"x", bad)  # garbage claims are ignored, never an error


# --- rate limits -----------------------------------------------------------------------------------------


def test_token_bucket_refuses_with_a_clear_message_and_refills() -> None:
    det, alerts, clock = _detector(rate_per_s=10.0, burst=5)
    for _ in range(5):
        det.admit("acme")
    with pytest.raises(ResourceExhausted, match=r"acme.*rate limit of 10 requests/s \(burst 5\); retry in 0\.100 s"):
        det.admit("acme")
    det.admit("other")  # per tenant
    clock.t += 0.25
    det.admit("acme")
    det.admit("acme")
    with pytest.raises(ids.RateLimited):
        det.admit("acme")
    assert _kinds(alerts) == ["rate.limited"] and det.snapshot()["rate_limited"] == {"acme": 2}


# --- state and sampling -------------------------------------------------------------------------------------


def test_baselines_survive_a_restart(tmp_path: Path) -> None:
    det, _alerts, clock = _detector(tmp_path, read_floor_bytes=KiB * KiB, baseline_window_s=HOUR)
    for _ in range(4):
        det.read("acme", "k", 100 * KiB)
        clock.t += HOUR
    det.read("acme", "k", 1)
    det.save()
    again, alerts2, _ = _detector(tmp_path, read_floor_bytes=KiB * KiB, baseline_window_s=HOUR)
    again.read("acme", "k", 2 * KiB * KiB)  # a known key: a spike check, not "never read"
    assert "read.unusual_key" not in _kinds(alerts2)
    (tmp_path / "ids.json").write_text("{not json")
    _detector(tmp_path)  # unreadable baselines: start fresh, never fail


def test_sampler_takes_bounded_samples_at_the_start_and_every_8_mib() -> None:
    data = [os.urandom(1_000_003) for _ in range(20)]  # ~20 MB in odd chunks
    s = Sampler(data)
    assert b"".join(s) == b"".join(data)
    sampled, bad = s.finish()
    assert sampled == 3 * 64 * KiB and bad == sampled  # at 0, 8 MiB, 16 MiB
    s = Sampler([text(300 * KiB)])
    list(s)
    assert s.finish() == (64 * KiB, 0)


# --- wired into the facade ----------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.gw.ids = IntrusionDetector(
        IdsConfig(auth_failures=5, mass_deletes=4, rate_per_s=0.0, read_floor_bytes=50_000),
        e.gw._on_alert,
        clock=e.clock.now,
    )
    yield e
    e.close()


def _audit(env: Env) -> list[dict[str, Any]]:
    return [json.loads(x) for x in env.config.audit_path.read_bytes().splitlines()]


def test_facade_alerts_land_in_the_audit_log(env: Env) -> None:
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            env.gw.authenticate("ovk_" + "ab" * 8 + "_" + "00" * 32, client="ipv4:6.6.6.6:1", source="6.6.6.6")
    for i in range(4):
        env.put(f"o{i}", b"x")
    reader = env.gw.authenticate(env.gw.create_api_key("acme", KeyMode.READ_ONLY).token)
    env.put("big", os.urandom(60_000))
    _, chunks = env.gw.get_object(reader, "data", "big")
    assert len(b"".join(chunks)) == 60_000
    for i in range(4):
        env.gw.delete_object(env.p, "data", f"o{i}")
    alerts = [(e["action"], e["target"]) for e in _audit(env) if e["outcome"] == "alert"]
    assert ("alert.auth.failed_burst", "source:6.6.6.6") in alerts
    assert ("alert.auth.failed_burst", "key:" + "ab" * 8) in alerts
    assert ("alert.read.unusual_key", f"key:{reader.key_id}") in alerts
    assert ("alert.delete.mass", "acme") in alerts
    with pytest.raises(NotFound):
        env.gw.head_object(env.p, "data", "o0")


def test_rate_limited_calls_are_refused_but_not_audited_one_by_one(env: Env) -> None:
    env.gw.ids = IntrusionDetector(IdsConfig(rate_per_s=0.001, burst=3), env.gw._on_alert, clock=env.clock.now)
    before = len(_audit(env))
    env.put("a", b"1")
    env.gw.head_object(env.p, "data", "a")
    env.put("b", b"2")
    for _ in range(20):
        with pytest.raises(ResourceExhausted, match="rate limit"):
            env.put("c", b"3")
    new = _audit(env)[before:]
    assert [e["action"] for e in new] == ["object.put", "object.put", "alert.rate.limited"]
