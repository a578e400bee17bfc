"""The gateway's defences over gRPC: MFA for destructive calls, intrusion alerts, rate limits."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest

from orbitvault.errors import PermissionDenied
from orbitvault.ground import mfa


def _secret(enrolment: mfa.Enrolment) -> bytes:
    b32 = enrolment.secret_b32
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def _code(gw: Any, secret: bytes, steps: int = 0) -> str:
    return mfa.totp(secret, gw.gateway.clock.now() + 30 * steps)


def _audit(gw: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in gw.gateway.config.audit_path.read_bytes().splitlines()]


# --- a stolen append-only key ------------------------------------------------------------------------------


def test_a_stolen_append_only_key_cannot_destroy_backups(gw: Any) -> None:
    """The backup client's key writes; stolen, it still cannot delete, overwrite or unlock."""
    from orbitvault.client.sdk import Retention, RetentionMode

    gw.client.create_bucket("backups")
    gw.client.put("backups", "data/00/pack", b"precious", legal_hold=True)
    thief = gw.new_client(mode="append-only", retries=0)
    thief.put("backups", "data/01/pack", b"new data is fine")
    with pytest.raises(PermissionDenied, match="append-only"):
        thief.delete("backups", "data/01/pack")
    with pytest.raises(PermissionDenied, match="append-only"):
        thief.put("backups", "data/01/pack", b"ransom note")
    with pytest.raises(PermissionDenied, match="append-only"):
        thief.set_legal_hold("backups", "data/00/pack", False)
    with pytest.raises(PermissionDenied, match="append-only"):
        thief.delete_bucket("backups")
    until = int(gw.gateway.clock.now() * 1000) + 10**8
    thief.set_retention("backups", "data/01/pack", Retention(RetentionMode.GOVERNANCE, until))  # lengthening is fine
    with pytest.raises(PermissionDenied):
        thief.set_retention("backups", "data/01/pack", None, bypass_governance=True)
    assert gw.client.get("backups", "data/00/pack") == b"precious"
    assert gw.client.get("backups", "data/01/pack") == b"new data is fine"
    denied = [e for e in _audit(gw) if e["outcome"] == "denied"]
    assert [e["action"] for e in denied] == [
        "object.delete",
        "object.put",
        "object.legal_hold",
        "bucket.delete",
        "object.retention",
    ]
    assert all(e["key_id"] == thief._metadata[0][1].split("_")[1] for e in denied)


# --- MFA -------------------------------------------------------------------------------------------------


def test_mfa_over_grpc_code_then_session(gw: Any) -> None:
    c = gw.client
    c.create_bucket("bkt")
    for i in range(4):
        c.put("bkt", f"pack{i}", b"x" * 100)
    secret = _secret(gw.gateway.mfa_enable("acme"))
    with pytest.raises(PermissionDenied, match="x-orbitvault-mfa"):
        c.delete("bkt", "pack0")
    # The code opens a session; the next deletes of the batch use it without a new code.
    c.delete("bkt", "pack0", mfa=_code(gw, secret, 1))
    assert c.mfa_session and c.mfa_session.startswith("ovm_")
    c.delete("bkt", "pack1")
    c.delete("bkt", "pack2")
    entries = [e for e in _audit(gw) if e["action"] == "object.delete" and e["outcome"] == "ok"]
    assert [e["detail"]["mfa"] for e in entries] == ["code", "session", "session"]
    assert [o.key for o in c.list("bkt")] == ["pack3"]


def test_a_replayed_totp_code_is_refused(gw: Any) -> None:
    """A code seen in transit (or over a shoulder) is worthless once used."""
    c = gw.client
    c.create_bucket("bkt")
    c.put("bkt", "k1", b"1")
    c.put("bkt", "k2", b"2")
    secret = _secret(gw.gateway.mfa_enable("acme"))
    code = _code(gw, secret, 1)
    c.delete("bkt", "k1", mfa=code)
    thief = gw.new_client(retries=0)  # another key of the tenant, same code
    with pytest.raises(PermissionDenied, match="used already"):
        thief.delete("bkt", "k2", mfa=code)
    # The thief's key does not get the victim's session either.
    thief._mfa_session = c.mfa_session
    with pytest.raises(PermissionDenied, match="another key"):
        thief.delete("bkt", "k2")
    assert c.head("bkt", "k2").size == 1


def test_a_code_provider_is_asked_only_when_needed(gw: Any) -> None:
    secret = _secret(gw.gateway.mfa_enable("acme"))
    asked: list[int] = []

    def provider() -> str:
        asked.append(1)
        return _code(gw, secret, 1)

    c = gw.new_client(mfa=provider)
    c.create_bucket("pp1")
    c.put("pp1", "a", b"x")  # a new key: no code
    c.set_legal_hold("pp1", "a", True)  # placing a hold: no code
    assert asked == []
    c.set_legal_hold("pp1", "a", False)  # lifting it: the provider is asked
    c.delete("pp1", "a")  # the session from that code
    c.delete_bucket("pp1")
    assert asked == [1]


def test_mfa_metadata_that_is_far_too_long_is_invalid(gw: Any) -> None:
    gw.client.create_bucket("bkt")
    gw.client.put("bkt", "k", b"x")
    gw.gateway.mfa_enable("acme")
    from orbitvault.grpc.v1 import object_store_pb2 as pb
    from orbitvault.grpc.v1 import object_store_pb2_grpc

    with grpc.insecure_channel(gw.server.address) as ch:
        stub = object_store_pb2_grpc.ObjectStoreStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteObject(
                pb.DeleteObjectRequest(bucket="bkt", key="k"),
                metadata=(("x-orbitvault-api-key", gw.token), ("x-orbitvault-mfa", "1" * 500)),
                timeout=10,
            )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# --- intrusion detection and rate limits -----------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_logins_rate_limits_and_metrics_over_grpc(constellation: Any) -> None:
    import urllib.request

    from orbitvault.errors import ResourceExhausted, Unauthenticated

    port = _free_port()
    server = constellation.start_gateway(
        metrics_port=port, ids_auth_failures=3, rate_limit_per_s=0.001, rate_limit_burst=6
    )
    server.gateway.create_tenant("acme")
    token = server.gateway.create_api_key("acme").token
    stranger = constellation.client(server.address, "ovk_" + "cd" * 8 + "_" + "00" * 32, retries=0)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            stranger.list_buckets().__next__()
    c = constellation.client(server.address, token, retries=0)
    c.create_bucket("bkt")
    with pytest.raises(ResourceExhausted, match=r"rate limit of 0\.001 requests/s \(burst 6\); retry in"):
        for i in range(10):
            c.put("bkt", f"k{i}", b"x")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'orbitvault_gateway_ids_alerts_total{kind="auth.failed_burst"} 2.0' in body  # source and key
    assert 'orbitvault_gateway_ids_alerts_total{kind="rate.limited"} 1.0' in body
    assert 'orbitvault_gateway_rate_limited_total{tenant="acme"}' in body
    assert "orbitvault_gateway_auth_failures_total 3.0" in body
    assert "orbitvault_gateway_audit_writable 1.0" in body
    entries = [json.loads(x) for x in server.gateway.config.audit_path.read_bytes().splitlines()]
    burst = [e for e in entries if e["action"] == "alert.auth.failed_burst"]
    assert {e["target"] for e in burst} == {"source:127.0.0.1", "key:" + "cd" * 8}
