"""TOTP (RFC 6238) for destructive operations: test vectors, replay, sessions, the facade's rules."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbitvault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from orbitvault.ground import mfa
from orbitvault.ground.model import Retention, RetentionMode
from tests.unit.ground_fakes import Env

# RFC 6238 appendix B: seeds per algorithm, times, 8-digit codes.
SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
VECTORS = [
    (59, {"sha1": "94287082", "sha256": "46119246", "sha512": "90693936"}),
    (1111111109, {"sha1": "07081804", "sha256": "68084774", "sha512": "25091201"}),
    (1111111111, {"sha1": "14050471", "sha256": "67062674", "sha512": "99943326"}),
    (1234567890, {"sha1": "89005924", "sha256": "91819424", "sha512": "93441116"}),
    (2000000000, {"sha1": "69279037", "sha256": "90698825", "sha512": "38618901"}),
    (20000000000, {"sha1": "65353130", "sha256": "77737706", "sha512": "47863826"}),
]
# RFC 4226 appendix D: HOTP of counters 0..9.
HOTP = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]


@pytest.mark.parametrize(("t", "codes"), VECTORS)
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_rfc6238_vectors(t: int, codes: dict[str, str], algorithm: str) -> None:
    assert mfa.totp(SEEDS[algorithm], t, digits=8, algorithm=algorithm) == codes[algorithm]


def test_rfc4226_vectors_and_six_digit_default() -> None:
    assert [mfa.hotp(SEEDS["sha1"], c) for c in range(10)] == HOTP
    assert mfa.totp(SEEDS["sha1"], 59) == "287082"  # the last 6 digits of 94287082


def test_one_step_of_tolerance_either_way() -> None:
    secret = SEEDS["sha1"]
    now = 1_700_000_015.0
    step = mfa.time_step(now)
    for delta in (-1, 0, 1):
        assert mfa.match_step(secret, mfa.hotp(secret, step + delta), now) == step + delta
    for delta in (-2, 2):
        assert mfa.match_step(secret, mfa.hotp(secret, step + delta), now) is None


def test_otpauth_uri() -> None:
    secret = bytes(range(20))
    uri = mfa.otpauth_uri(secret, "acme")
    parsed = urllib.parse.urlparse(uri)
    assert (parsed.scheme, parsed.netloc, parsed.path) == ("otpauth", "totp", "/orbitvault:acme")
    q = dict(urllib.parse.parse_qsl(parsed.query))
    assert q == {
        "secret": mfa.secret_b32(secret),
        "issuer": "orbitvault",
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }
    b32 = q["secret"]
    assert base64.b32decode(b32 + "=" * (-len(b32) % 8)) == secret


# --- the facade ---------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, mfa_session_s=120.0)
    yield e
    e.close()


def _secret(enrolment: mfa.Enrolment) -> bytes:
    b32 = enrolment.secret_b32
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def _code(env: Env, secret: bytes, steps: int = 0) -> str:
    return mfa.totp(secret, env.clock.now() + 30 * steps)


def _enable(env: Env, **kw: object) -> bytes:
    return _secret(env.gw.mfa_enable("acme", **kw))  # type: ignore[arg-type]


def test_without_mfa_nothing_changes(env: Env) -> None:
    env.put("a", b"x")
    env.gw.delete_object(env.p, "data", "a")
    assert not env.gw.mfa_required("acme")


def test_a_delete_needs_a_current_code(env: Env) -> None:
    env.put("a", b"x")
    secret = _enable(env)
    with pytest.raises(PermissionDenied, match="needs MFA"):
        env.gw.delete_object(env.p, "data", "a")
    with pytest.raises(PermissionDenied, match="wrong MFA code"):
        env.gw.delete_object(env.p, "data", "a", mfa=_code(env, secret, steps=3))
    with pytest.raises(PermissionDenied, match="digits"):
        env.gw.delete_object(env.p, "data", "a", mfa="12ab56")
    env.gw.delete_object(env.p, "data", "a", mfa=_code(env, secret))
    with pytest.raises(NotFound):
        env.gw.head_object(env.p, "data", "a")


def test_a_replayed_code_is_refused(env: Env) -> None:
    for k in ("a", "b", "c"):
        env.put(k, b"x")
    secret = _enable(env)
    code = _code(env, secret)
    env.gw.delete_object(env.p, "data", "a", mfa=code)
    with pytest.raises(PermissionDenied, match="used already"):
        env.gw.delete_object(env.p, "data", "b", mfa=code)  # same code, same step
    previous = _code(env, secret, steps=-1)  # within tolerance, but before the step just used
    with pytest.raises(PermissionDenied, match="used already"):
        env.gw.delete_object(env.p, "data", "b", mfa=previous)
    env.clock.advance(30)
    env.gw.delete_object(env.p, "data", "b", mfa=_code(env, secret))  # the next step's code works
    # A reopened gateway (another process) remembers the last step: the replay stays refused.
    env.reopen()
    with pytest.raises(PermissionDenied, match="used already"):
        env.gw.delete_object(env.p, "data", "c", mfa=_code(env, secret))


def test_a_session_serves_a_batch_then_expires(env: Env) -> None:
    for i in range(5):
        env.put(f"pack{i}", b"x")
    secret = _enable(env)
    grant = env.gw.authorize_mfa(env.p, _code(env, secret))
    assert grant is not None and grant.via == "code" and grant.session.startswith("ovm_")
    for i in range(4):
        env.gw.delete_object(env.p, "data", f"pack{i}", mfa=grant.session)
    other = env.gw.authenticate(env.gw.create_api_key("acme").token)
    with pytest.raises(PermissionDenied, match="another key"):
        env.gw.delete_object(other, "data", "pack4", mfa=grant.session)
    forged = grant.session[:-4] + ("0000" if not grant.session.endswith("0000") else "1111")
    with pytest.raises(PermissionDenied, match="session"):
        env.gw.delete_object(env.p, "data", "pack4", mfa=forged)
    env.clock.advance(121)
    with pytest.raises(PermissionDenied, match="expired"):
        env.gw.delete_object(env.p, "data", "pack4", mfa=grant.session)


def test_every_destructive_call_needs_it(env: Env) -> None:
    now_ms = int(env.clock.now() * 1000)
    env.put("locked", b"x", retention=Retention(RetentionMode.GOVERNANCE, now_ms + 10**9))
    env.put("held", b"x", legal_hold=True)
    env.put("plain", b"x")
    env.gw.create_bucket(env.p, "empty", env.geometry)
    secret = _enable(env)
    # Not destructive: new objects, extending retention, placing holds.
    env.put("new", b"x")
    env.gw.set_retention(env.p, "data", "locked", Retention(RetentionMode.GOVERNANCE, now_ms + 2 * 10**9))
    env.gw.set_legal_hold(env.p, "data", "plain", True)
    env.gw.set_legal_hold(env.p, "data", "plain", False, mfa=_code(env, secret))
    env.clock.advance(30)
    with pytest.raises(PermissionDenied, match="overwriting"):
        env.put("new", b"replacement")
    with pytest.raises(PermissionDenied, match="shortening"):
        env.gw.set_retention(env.p, "data", "locked", None, bypass_governance=True)
    with pytest.raises(PermissionDenied, match="lifting"):
        env.gw.set_legal_hold(env.p, "data", "held", False)
    with pytest.raises(PermissionDenied, match="bucket"):
        env.gw.delete_bucket(env.p, "empty")
    with pytest.raises(PermissionDenied, match="API key"):
        env.gw.delete_api_key(env.key.key_id)
    grant = env.gw.authorize_mfa(env.p, _code(env, secret))
    assert grant is not None
    env.put("new", b"replacement", mfa=grant.session)
    env.gw.set_retention(env.p, "data", "locked", None, bypass_governance=True, mfa=grant)
    env.gw.set_legal_hold(env.p, "data", "held", False, mfa=grant)
    env.gw.delete_bucket(env.p, "empty", mfa=grant)
    assert env.get("new") == b"replacement"
    env.clock.advance(30)
    env.gw.delete_api_key(env.key.key_id, mfa=_code(env, secret))  # admin: a code, no key-bound session
    # COMPLIANCE stays unshortenable whatever the code.
    env.p = env.gw.authenticate(env.gw.create_api_key("acme").token)
    env.put("compliant", b"x", retention=Retention(RetentionMode.COMPLIANCE, now_ms + 10**9))
    env.clock.advance(30)
    with pytest.raises(FailedPrecondition, match="COMPLIANCE"):
        env.gw.set_retention(env.p, "data", "compliant", None, bypass_governance=True, mfa=_code(env, secret))


def test_exempt_patterns_let_clients_remove_their_locks(env: Env) -> None:
    env.put("locks/0a1b", b"lock")
    env.put("data/00/pack", b"pack")
    _enable(env, exempt=["locks/*"])
    env.gw.delete_object(env.p, "data", "locks/0a1b")
    with pytest.raises(PermissionDenied):
        env.gw.delete_object(env.p, "data", "data/00/pack")
    with pytest.raises(PermissionDenied, match="needs MFA"):
        env.gw.mfa_disable("acme", None)
    env.gw.create_tenant("beta")
    with pytest.raises(InvalidArgument, match="everything"):
        env.gw.mfa_enable("beta", exempt=["*"])


def test_guessing_locks_the_tenant_out(env: Env) -> None:
    env.put("a", b"x")
    secret = _enable(env)
    right = _code(env, secret)
    wrong = [c for c in (f"{i:06d}" for i in range(100)) if mfa.match_step(secret, c, env.clock.now()) is None]
    for code in wrong[:4]:
        with pytest.raises(PermissionDenied):
            env.gw.delete_object(env.p, "data", "a", mfa=code)
    with pytest.raises(PermissionDenied):
        env.gw.delete_object(env.p, "data", "a", mfa=wrong[4])  # the fifth locks
    with pytest.raises(ResourceExhausted, match="locked"):
        env.gw.delete_object(env.p, "data", "a", mfa=right)  # even the right code, for a while
    actions = [json.loads(x)["action"] for x in env.config.audit_path.read_bytes().splitlines()]
    assert "alert.mfa.lockout" in actions


def test_enable_disable_and_the_secret_at_rest(env: Env) -> None:
    enrolment = env.gw.mfa_enable("acme")
    secret = _secret(enrolment)
    with pytest.raises(AlreadyExists):
        env.gw.mfa_enable("acme")
    rec = env.gw.catalog.get_mfa("acme")
    assert rec is not None and secret not in rec.wrapped_secret
    raw = b"".join(v for _, v in env.gw.catalog.scan("mfa"))
    assert secret.hex().encode() not in raw and enrolment.secret_b32.encode() not in raw
    env.clock.advance(30)
    with pytest.raises(PermissionDenied):
        env.gw.mfa_disable("acme", "000000" if _code(env, secret) != "000000" else "111111")
    grant = env.gw.authorize_mfa(env.p, _code(env, secret))
    assert grant is not None
    with pytest.raises(PermissionDenied, match="not a session"):
        env.gw.mfa_disable("acme", grant.session)
    env.clock.advance(30)
    env.gw.mfa_disable("acme", _code(env, secret))
    assert not env.gw.mfa_required("acme")
    # Re-enrolling invalidates old sessions.
    env.gw.mfa_enable("acme")
    env.put("a", b"x")
    with pytest.raises(PermissionDenied, match="session"):
        env.gw.delete_object(env.p, "data", "a", mfa=grant.session)
    actions = [json.loads(x)["action"] for x in env.config.audit_path.read_bytes().splitlines()]
    assert actions.count("mfa.enable") == 3 and actions.count("mfa.disable") == 3  # refused ones too


def test_mfa_survives_a_rebuild_from_orbit(env: Env) -> None:
    """Losing the ground site must not silently switch MFA off: the checkpoint carries it."""
    import shutil

    from orbitvault.ground.gateway import Gateway
    from orbitvault.ground.nodes import NodeDirectory

    env.put("a", b"x")
    secret = _enable(env, exempt=["locks/*"])
    env.gw.checkpoint()
    env.gw.close()
    shutil.rmtree(env.config.state_dir)
    env.directory = NodeDirectory(env.links, clock=env.clock)
    Gateway.rebuild(env.config, env.directory, env.master, clock=env.clock)
    env.gw = env.open()
    rec = env.gw.mfa_status("acme")
    assert rec is not None and rec.exempt == ("locks/*",)
    with pytest.raises(PermissionDenied, match="needs MFA"):
        env.gw.delete_object(env.p, "data", "a")
    env.gw.delete_object(env.p, "data", "a", mfa=_code(env, secret))


def test_cli_enable_status_key_delete_disable(env: Env, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orbitvault.cli import cli

    key_file = tmp_path / "master.key"
    env.master.write_file(key_file)
    config = tmp_path / "gw.toml"
    config.write_text(f'state_dir = "{env.config.state_dir}"\nmaster_key_file = "{key_file}"\nsegment_size = 8192\n')
    env.gw.close()  # the CLI opens the catalog itself (once per process for LMDB)
    run = CliRunner().invoke
    enabled = run(cli, ["gateway", "mfa", "enable", "acme", "--exempt", "locks/*", "--config", str(config)])
    assert enabled.exit_code == 0, enabled.output
    uri = enabled.stdout.strip()
    assert uri.startswith("otpauth://totp/orbitvault:acme?") and "secret (base32)" in enabled.stderr
    b32 = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(uri).query))["secret"]
    secret = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    status = run(cli, ["gateway", "mfa", "status", "acme", "--config", str(config)])
    assert "MFA on since" in status.output and "locks/*" in status.output
    refused = run(cli, ["gateway", "key", "delete", env.key.key_id, "--config", str(config)])
    assert refused.exit_code == 1 and "needs MFA" in refused.output and "Traceback" not in refused.output
    code = mfa.totp(secret, time.time())  # the CLI runs on wall time
    deleted = run(cli, ["gateway", "key", "delete", env.key.key_id, "--mfa", code, "--config", str(config)])
    assert deleted.exit_code == 0, deleted.output
    again = run(cli, ["gateway", "mfa", "disable", "acme", "--code", code, "--config", str(config)])
    assert again.exit_code == 1 and "used already" in again.output
    later = mfa.totp(secret, time.time() + 30)  # the next step: within the tolerance
    off = run(cli, ["gateway", "mfa", "disable", "acme", "--code", later, "--config", str(config)])
    assert off.exit_code == 0 and "disabled" in off.output
