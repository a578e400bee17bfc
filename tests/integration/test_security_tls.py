"""Mutual TLS on every channel: roles, a man in the middle, expired certificates, plaintext.

A real PKI (`orbitvault.ground.pki`) and real servers on loopback: nodes with node certificates,
a gateway with a gateway certificate, clients with client certificates; plus an attacker's CA
whose certificates look the same but were not signed by ours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from orbitvault.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from orbitvault.ground import pki
from orbitvault.grpc import convert
from orbitvault.grpc.node_link import GrpcNodeLink
from orbitvault.grpc.peers import GrpcPeerRows
from orbitvault.grpc.tls import TlsFiles, channel_credentials, open_channel
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from orbitvault.storage.config import load_node_config

LOOPBACK = ("127.0.0.1",)


@dataclass
class Pki:
    """Our CA with issued certificates, and an attacker's CA that issues look-alikes."""

    dir: Path
    evil: Path

    def files(self, name: str, *, evil: bool = False) -> TlsFiles:
        d = self.evil if evil else self.dir
        return TlsFiles(d / "ca.crt", d / f"{name}.crt", d / f"{name}.key")

    def node_settings(self, name: str) -> dict[str, Any]:
        f = self.files(name)
        return {"tls_ca": str(f.ca), "tls_cert": str(f.cert), "tls_key": str(f.key)}

    def expired(self, role: str, name: str) -> TlsFiles:
        """A certificate of `role` from our CA that expired yesterday."""
        ca_cert, ca_key = pki.load_ca(self.dir)
        now = dt.datetime.now(dt.UTC)
        cert, key = pki.make_leaf(
            ca_cert,
            ca_key,
            pki.Role(role),
            name,
            ips=LOOPBACK,
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        (self.dir / f"{name}.crt").write_bytes(pki.cert_pem(cert))
        (self.dir / f"{name}.key").write_bytes(pki.key_pem(key))
        return self.files(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ours, evil = root / "ours", root / "evil"
    pki.init(ours)
    pki.init(evil, name="attacker CA")
    for i in range(6):
        pki.issue(ours, "node", f"sat-{i}", ips=LOOPBACK)
    pki.issue(ours, "gateway", "gw", ips=LOOPBACK)
    pki.issue(ours, "client", "alice")
    pki.issue(ours, "node", "elsewhere", dns=("sat-9.example",))  # valid, but for another name
    # The attacker copies our names and roles exactly; only the signature differs.
    for role, name in (("node", "sat-0"), ("gateway", "gw"), ("client", "alice")):
        pki.issue(evil, role, name, ips=LOOPBACK)
    return Pki(ours, evil)


def _stub(address: str, files: TlsFiles | None) -> tuple[grpc.Channel, shard_store_pb2_grpc.ShardStoreStub]:
    channel = open_channel(address, files, convert.CHANNEL_OPTIONS)
    return channel, shard_store_pb2_grpc.ShardStoreStub(channel)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


# --- nodes: who may call -------------------------------------------------------------------------------


def test_gateway_and_peer_certificates_may_write_and_read(certs: Pki, start_node: Any, make_shard: Any) -> None:
    node = start_node(**certs.node_settings("sat-0"), channel_tls=certs.files("gw"))
    shard = make_shard()
    assert node.put(shard).complete
    assert node.stored_ids() == [shard.shard_id]
    channel, peer = _stub(node.address, certs.files("sat-1"))
    with channel:
        rows = list(peer.ReadRows(pb.ReadRowsRequest(shard_id=shard.shard_id, rows=[0, 1]), timeout=10))
        assert [r.row for m in rows for r in m.rows] == [0, 1]
        assert peer.DeleteShard(pb.DeleteShardRequest(shard_id=shard.shard_id), timeout=10).existed


def test_a_client_certificate_cannot_touch_shards(certs: Pki, start_node: Any, make_shard: Any) -> None:
    """A stolen client certificate reaches the node's TLS port but no shard call."""
    node = start_node(**certs.node_settings("sat-0"), channel_tls=certs.files("gw"))
    kept = make_shard()
    node.put(kept)
    channel, stub = _stub(node.address, certs.files("alice"))
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            stub.PutShard(make_shard().requests(), timeout=10)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "gateway or node" in err.value.details() and "client certificate" in err.value.details()
        for call in (
            lambda: stub.DeleteShard(pb.DeleteShardRequest(shard_id=kept.shard_id), timeout=10),
            lambda: stub.ForwardShard(pb.ForwardShardRequest(), timeout=10),
            lambda: list(stub.GetShard(pb.GetShardRequest(shard_id=kept.shard_id), timeout=10)),
            lambda: list(stub.ReadRows(pb.ReadRowsRequest(shard_id=kept.shard_id, rows=[0]), timeout=10)),
            lambda: stub.HeadShard(pb.HeadShardRequest(shard_id=kept.shard_id), timeout=10),
            lambda: stub.ListShards(pb.ListShardsRequest(), timeout=10),
            lambda: stub.NodeInfo(pb.NodeInfoRequest(), timeout=10),
        ):
            assert _code(call) is grpc.StatusCode.PERMISSION_DENIED
    assert node.stored_ids() == [kept.shard_id]  # nothing stored, nothing deleted


def test_man_in_the_middle_with_another_cas_certificate_is_refused(
    certs: Pki, start_node: Any, make_shard: Any
) -> None:
    """An impostor node (same name, role and address SAN, other CA) gets no shard from the gateway,
    and an impostor gateway gets no call through to a real node."""
    impostor = start_node(
        tls_ca=str(certs.files("sat-0", evil=True).ca),
        tls_cert=str(certs.files("sat-0", evil=True).cert),
        tls_key=str(certs.files("sat-0", evil=True).key),
        channel_tls=certs.files("gw", evil=True),
    )
    link = GrpcNodeLink(impostor.address, credentials=channel_credentials(certs.files("gw")), timeout_s=5)
    with link, pytest.raises(Unavailable):
        link.put_shard(make_shard().header, [])
    assert impostor.stored_ids() == []  # the real gateway never completed a handshake with it

    real = start_node(**certs.node_settings("sat-1"), channel_tls=certs.files("gw"))
    channel, stub = _stub(real.address, certs.files("gw", evil=True))
    with channel:
        assert _code(lambda: stub.PutShard(make_shard().requests(), timeout=5)) is grpc.StatusCode.UNAVAILABLE
    assert real.stored_ids() == []


def test_a_valid_certificate_for_another_address_is_refused(certs: Pki, start_node: Any) -> None:
    """Our CA signed it, but for sat-9.example: a client dialing 127.0.0.1 does not accept it."""
    node = start_node(**certs.node_settings("elsewhere"))
    link = GrpcNodeLink(node.address, credentials=channel_credentials(certs.files("gw")), timeout_s=5)
    with link, pytest.raises(Unavailable):
        link.info()


def test_expired_certificates_are_refused_both_ways(certs: Pki, start_node: Any, make_shard: Any) -> None:
    node = start_node(**certs.node_settings("sat-2"), channel_tls=certs.files("gw"))
    old_gateway = certs.expired("gateway", "old-gw")
    channel, stub = _stub(node.address, old_gateway)
    with channel:
        assert _code(lambda: stub.NodeInfo(pb.NodeInfoRequest(), timeout=5)) is grpc.StatusCode.UNAVAILABLE
        assert _code(lambda: stub.PutShard(make_shard().requests(), timeout=5)) is grpc.StatusCode.UNAVAILABLE
    assert node.stored_ids() == []
    old_node = certs.expired("node", "old-node")
    stale = start_node(
        tls_ca=str(old_node.ca), tls_cert=str(old_node.cert), tls_key=str(old_node.key), channel_tls=None
    )
    link = GrpcNodeLink(stale.address, credentials=channel_credentials(certs.files("gw")), timeout_s=5)
    with link, pytest.raises(Unavailable):
        link.info()


def test_plaintext_and_tls_do_not_mix(certs: Pki, start_node: Any) -> None:
    tls_node = start_node(**certs.node_settings("sat-3"), channel_tls=certs.files("gw"))
    channel, stub = _stub(tls_node.address, None)
    with channel:
        assert _code(lambda: stub.NodeInfo(pb.NodeInfoRequest(), timeout=5)) is grpc.StatusCode.UNAVAILABLE
    plain_node = start_node()  # insecure, said explicitly by the fixture
    channel, stub = _stub(plain_node.address, certs.files("gw"))
    with channel:
        assert _code(lambda: stub.NodeInfo(pb.NodeInfoRequest(), timeout=5)) is grpc.StatusCode.UNAVAILABLE


def test_peer_repair_reads_rows_over_mtls_with_a_node_certificate(certs: Pki, start_node: Any, make_shard: Any) -> None:
    node = start_node(**certs.node_settings("sat-4"), channel_tls=certs.files("gw"))
    shard = make_shard()
    node.put(shard)
    node_id = node.store.node_id
    with GrpcPeerRows([node.address], tls=certs.files("sat-5")) as peers:
        rows = peers.read_rows(node_id, shard.shard_id, [0, 2])
        assert [r.fragment for r in rows] == [shard.fragments[0], shard.fragments[2]]
    with GrpcPeerRows([node.address], tls=certs.files("alice")) as thief:
        thief.refresh(force=True)  # NodeInfo refused: the node id stays unknown
        with pytest.raises(Unavailable):
            thief.address_of(node_id)


# --- servers refuse to start without an explicit choice ------------------------------------------------


def test_servers_need_tls_or_an_explicit_insecure(certs: Pki, tmp_path: Path, constellation: Any) -> None:
    from orbitvault.grpc.gateway_server import serve as serve_gateway
    from orbitvault.grpc.node_server import serve as serve_node

    config = load_node_config(None, env={}, overrides={"capacity": "1GiB", "data_dir": str(tmp_path / "n")})
    with pytest.raises(FailedPrecondition, match="--insecure"):
        serve_node(config)
    assert not (tmp_path / "n").exists()  # refused before the store was created
    with pytest.raises(InvalidArgument, match="drop one"):
        load_node_config(None, env={}, overrides={"capacity": 1000, "insecure": True, **certs.node_settings("sat-0")})
    with pytest.raises(InvalidArgument, match="missing: tls_key"):
        load_node_config(None, env={}, overrides={"capacity": 1000, "tls_ca": "a", "tls_cert": "b"})
    with pytest.raises(FailedPrecondition, match="--insecure"):
        serve_gateway(constellation.config(insecure=False), maintenance=False)
    from orbitvault.client.sdk import ObjectStoreClient

    with pytest.raises(InvalidArgument, match="insecure=True"):
        ObjectStoreClient("127.0.0.1:1", "ovk_x")


# --- the whole chain: client -> gateway -> nodes ---------------------------------------------------------


@pytest.fixture
def tls_sky(certs: Pki, start_node: Any, tmp_path: Path) -> Any:
    """Six TLS nodes and a TLS gateway, tenant acme with a full key."""
    from orbitvault.ground.crypto import MasterKey
    from tests.integration.conftest import Constellation

    nodes = [
        start_node(
            simulation=True,
            plane=str(i % 3),
            name=f"sat-{i}",
            channel_tls=certs.files("gw"),
            **certs.node_settings(f"sat-{i}"),
        )
        for i in range(6)
    ]
    key_file = tmp_path / "master.key"
    MasterKey.generate().write_file(key_file)
    sky = Constellation(tmp_path, nodes, key_file, start_node)
    gw = certs.files("gw")
    server = sky.start_gateway(tls_ca=gw.ca, tls_cert=gw.cert, tls_key=gw.key)
    server.gateway.create_tenant("acme")
    token = server.gateway.create_api_key("acme").token
    yield sky, server, token
    sky.close()


def test_end_to_end_over_mtls(certs: Pki, tls_sky: Any) -> None:
    sky, server, token = tls_sky
    alice = sky.client(server.address, token, tls=certs.files("alice"))
    alice.create_bucket("photos")
    data = b"over mutual TLS" * 5000
    alice.put("photos", "a", data)
    assert alice.get("photos", "a") == data
    import json

    entries = [json.loads(x) for x in server.gateway.config.audit_path.read_bytes().splitlines()]
    put = next(e for e in entries if e["action"] == "object.put")
    assert (put["principal"], put["tenant"], put["target"]) == ("client:alice", "acme", "photos/a")
    assert server.gateway.status().nodes and all(
        n.reachability.value == "IN_CONTACT" for n in server.gateway.status().nodes
    )
    # A tenant sees the nodes' state but not where they are; the operator (the gateway's own
    # certificate) sees their addresses too.
    seen = alice.gateway_status().nodes
    assert len(seen) == 6 and all(n.reachability == "in_contact" and n.address == "" for n in seen)
    operator = sky.client(server.address, token, tls=certs.files("gw"))
    assert sorted(n.address for n in operator.gateway_status().nodes) == sorted(n.address for n in sky.nodes)
    # A node certificate is no way into the object API, even with a valid API key.
    rogue = sky.client(server.address, token, tls=certs.files("sat-0"), retries=0)
    with pytest.raises(PermissionDenied, match="client or gateway"):
        rogue.head("photos", "a")
    # An attacker's client certificate does not get through the handshake.
    evil = sky.client(server.address, token, tls=certs.files("alice", evil=True), retries=0, timeout_s=5)
    with pytest.raises(Unavailable):
        evil.head("photos", "a")
    plain = sky.client(server.address, token, insecure=True, retries=0, timeout_s=5)
    with pytest.raises(Unavailable):
        plain.head("photos", "a")


def test_cli_node_serve_with_tls_flags(certs: Pki, spawn_node: Any, tmp_path: Path) -> None:
    f = certs.files("sat-0")
    proc = spawn_node(tmp_path / "n", "--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key))
    with open_channel(proc.address, certs.files("gw"), convert.CHANNEL_OPTIONS) as channel:
        info = shard_store_pb2_grpc.ShardStoreStub(channel).NodeInfo(pb.NodeInfoRequest(), timeout=10)
        assert len(info.node_id) == 32
    assert "tls=mtls" in proc.log()


def test_cli_gateway_serve_and_status_over_mtls(certs: Pki, tls_sky: Any, spawn_gateway: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orbitvault.cli import cli

    sky, _server, _token = tls_sky
    gw = certs.files("gw")
    config = sky.toml(tmp_path / "gw2.toml", state_dir=tmp_path / "gw2", tls_ca=gw.ca, tls_cert=gw.cert, tls_key=gw.key)
    runner = CliRunner()
    assert runner.invoke(cli, ["gateway", "tenant", "create", "acme", "--config", str(config)]).exit_code == 0
    made = runner.invoke(cli, ["gateway", "key", "create", "acme", "--config", str(config)])
    token = made.stdout.strip()
    proc = spawn_gateway(config)
    assert "tls=mtls" in proc.log()
    alice = certs.files("alice")
    tls_flags = ["--tls-ca", str(alice.ca), "--tls-cert", str(alice.cert), "--tls-key", str(alice.key)]
    ok = runner.invoke(cli, ["gateway", "status", "--address", proc.address, "--api-key", token, *tls_flags])
    assert ok.exit_code == 0 and "6 known, 6 up" in ok.output, ok.output
    assert not any(a in ok.output for a in sky.addresses)  # a client certificate: no node addresses
    own = runner.invoke(
        cli, ["gateway", "status", "--config", str(config), "--address", proc.address, "--api-key", token]
    )
    assert own.exit_code == 0, own.output  # the gateway's own certificate from the config
    assert all(a in own.output for a in sky.addresses)  # the operator sees where the nodes are
    plain = runner.invoke(
        cli, ["gateway", "status", "--address", proc.address, "--api-key", token, "--insecure", "--timeout", "3"]
    )
    assert plain.exit_code == 1 and "Traceback" not in plain.output
