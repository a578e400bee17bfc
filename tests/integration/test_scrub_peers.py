"""Scrub with real nodes on loopback: sibling rows come over the ReadRows rpc (`GrpcPeerRows`).

Six in-process nodes hold 4+2 stripe sets; bits are flipped across all of them; each node's
scrubber repairs from the others over gRPC. Also: down peers, NodeInfo and Prometheus reporting
the persisted counters, and `orbitvault node scrub` as a separate process beside a serving node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orbitvault.errors import Unavailable
from orbitvault.grpc.peers import GrpcPeerRows
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.storage.metrics import start_metrics_server
from orbitvault.storage.scrubber import Scrubber, load_state
from orbitvault.storage.store import RowBatch, RowStatus
from tests.unit.test_scrubber import Cluster, build_cluster, irradiate_and_repair, wreck


@pytest.fixture
def grid(start_node: Any, tmp_path: Path) -> tuple[list[Any], Cluster]:
    nodes = [start_node(simulation=True, name=f"sat{i}") for i in range(6)]
    cluster = build_cluster(tmp_path, stores=[n.store for n in nodes])
    return nodes, cluster


def _peers(nodes: list[Any], i: int, **kwargs: Any) -> GrpcPeerRows:
    return GrpcPeerRows([n.address for j, n in enumerate(nodes) if j != i], timeout_s=5, **kwargs)


def test_irradiated_nodes_repaired_over_grpc(grid: tuple[list[Any], Cluster]) -> None:
    nodes, cluster = grid
    peers = [_peers(nodes, i) for i in range(len(nodes))]
    try:
        irradiate_and_repair(cluster, lambda i: peers[i])
    finally:
        for p in peers:
            p.close()
    # NodeInfo reports what the scrubber persisted.
    for n in nodes:
        st = load_state(n.store)
        info = n.stub.NodeInfo(pb.NodeInfoRequest(), timeout=5).scrub
        assert (info.damaged_found, info.repaired_in_place, info.repaired_from_peers, info.unrecoverable) == (
            st.damaged_found,
            st.repaired_in_place,
            st.repaired_from_peers,
            st.unrecoverable,
        )
        assert info.passes_completed == 2 and info.shards_verified == st.shards_verified > 0


def test_down_peers_are_skipped_then_reported(grid: tuple[list[Any], Cluster]) -> None:
    nodes, cluster = grid
    by_node = {n.store.node_id: n for n in nodes}
    sid = next(s for s, h in cluster.headers.items() if h.shard_index == 0 and h.row_count > 4)
    header = cluster.headers[sid]
    home = by_node[header.siblings[0].node_id]
    wreck(home.store, sid, 4, 500)

    # One sibling node down: the row is rebuilt from the four others.
    down = [by_node[header.siblings[i].node_id] for i in (1, 2, 3)]
    down[0].server.stop(0)
    with _peers(nodes, nodes.index(home)) as peers:
        result = Scrubber(home.store, peers).run_pass()
    assert (result.repaired_from_peers, result.unrecoverable) == (1, 0)

    # Three down: two healthy siblings reachable, four needed. Reported with the exact row.
    wreck(home.store, sid, 4, 501)
    for n in down[1:]:
        n.server.stop(0)
    with _peers(nodes, nodes.index(home)) as peers:
        with pytest.raises(Unavailable):
            peers.read_rows(header.siblings[1].node_id, header.siblings[1].shard_id, [0])
        result = Scrubber(home.store, peers).run_pass()
    [d] = result.unrecoverable_damage
    assert (d.shard_id, d.rows, d.object_id, d.stripe_index) == (sid, [4], header.object_id, header.stripe_index)
    assert "unreachable" in d.reason
    info = home.stub.NodeInfo(pb.NodeInfoRequest(), timeout=5).scrub
    assert info.unrecoverable == 1 and info.repaired_from_peers == 1


def test_a_sibling_moved_since_the_header_was_written_is_found(
    grid: tuple[list[Any], Cluster], start_node: Any
) -> None:
    """Headers name where siblings were; a shard rebuilt or re-placed elsewhere is still found."""
    nodes, cluster = grid
    new = start_node(simulation=True, name="sat6")  # a seventh node: it holds none of the stripes
    by_node = {n.store.node_id: n for n in nodes}
    sid = next(s for s, h in cluster.headers.items() if h.shard_index == 0 and h.row_count > 4)
    header = cluster.headers[sid]
    home = by_node[header.siblings[0].node_id]
    moved = header.siblings[1]
    old = by_node[moved.node_id]
    sh = old.store.header(moved.shard_id)
    reads = list(old.store.read_rows(moved.shard_id, range(sh.row_count)))
    new.store.put(sh, [RowBatch(0, [r.fragment for r in reads], [r.checksum for r in reads])])
    old.store.delete(moved.shard_id)
    by_node[header.siblings[2].node_id].server.stop(0)  # so the moved shard is one of the k needed
    wreck(home.store, sid, 3, 600)
    with _peers([*nodes, new], nodes.index(home)) as peers:
        result = Scrubber(home.store, peers).run_pass()
        assert (result.repaired_from_peers, result.unrecoverable) == (1, 0)
        assert peers.locate(moved.shard_id) == new.address
        assert peers.locate(bytes(32)) is None
    [row] = home.store.read_rows(sid, [3])
    assert row.status is RowStatus.OK and row.fragment == cluster.fragments[sid][3]


def test_metrics_expose_the_persisted_counters(grid: tuple[list[Any], Cluster]) -> None:
    nodes, _ = grid
    n = nodes[0]
    sid = next(n.store.shard_ids())
    wreck(n.store, sid, 0, 400)
    with _peers(nodes, 0) as peers:
        Scrubber(n.store, peers).run_pass()
    server, port = start_metrics_server(0, n.store, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    node = n.store.node_id.hex()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("orbitvault_") and f'node_id="{node}"' in line
    }
    assert values["orbitvault_scrub_damaged_found_total"] == 1
    assert values["orbitvault_scrub_repaired_from_peers_total"] == 1
    assert values["orbitvault_scrub_passes_completed_total"] == 1
    assert values["orbitvault_scrub_shards_verified_total"] == n.store.shard_count()
    assert values["orbitvault_scrub_open_damage"] == 0


def test_node_scrub_process_beside_a_serving_node(grid: tuple[list[Any], Cluster], tmp_path: Path) -> None:
    """`orbitvault node scrub` in its own process on the store a running node serves (LMDB multi-process)."""
    nodes, cluster = grid
    n = nodes[0]
    sid = next(n.store.shard_ids())
    wreck(n.store, sid, 1, 300)
    assert [r.status for r in n.store.read_rows(sid, [1])] == [RowStatus.DAMAGED]
    config = tmp_path / "scrub.toml"
    peers = ", ".join(f'"{m.address}"' for m in nodes[1:])
    config.write_text(f'data_dir = "{n.data_dir}"\ncapacity = "1GiB"\npeers = [{peers}]\ninsecure = true\n')
    proc = subprocess.run(
        [sys.executable, "-m", "orbitvault", "node", "scrub", "--config", str(config), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_NODE_")},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["damaged_found"], doc["repaired_from_peers"], doc["unrecoverable"]) == (1, 1, [])
    # The serving node sees the repaired row and the other process's counters.
    [row] = n.store.read_rows(sid, [1])
    assert row.status is RowStatus.OK and row.fragment == cluster.fragments[sid][1]
    info = n.stub.NodeInfo(pb.NodeInfoRequest(), timeout=5).scrub
    assert info.repaired_from_peers == 1 and info.passes_completed == 1
    assert info.bytes_verified == sum(cluster.headers[s].shard_len() for s in n.store.shard_ids())


def test_get_shard_repairs_a_damaged_row_from_configured_peers(grid: tuple[list[Any], Cluster]) -> None:
    """A node configured with peers rebuilds a damaged row before GetShard sends it."""
    import grpc

    from orbitvault.grpc import convert
    from orbitvault.grpc.node_server import serve
    from orbitvault.grpc.v1 import shard_store_pb2_grpc
    from orbitvault.storage.config import load_node_config

    nodes, cluster = grid
    sid = next(s for s, h in cluster.headers.items() if h.row_count > 3)
    home_index = cluster.home[sid]
    home = nodes[home_index]
    home.server.stop(0)
    config = load_node_config(
        None,
        env={},
        overrides={
            "capacity": "1GiB",
            "listen": "127.0.0.1:0",
            "data_dir": str(home.data_dir),
            "peers": [n.address for j, n in enumerate(nodes) if j != home_index],
            "insecure": True,
        },
    )
    with serve(config) as server:
        server.store.flip_bit(sid, 2, 8 * 32 + 99)  # inside row 2's fragment
        with grpc.insecure_channel(server.address, options=convert.CHANNEL_OPTIONS) as channel:
            stub = shard_store_pb2_grpc.ShardStoreStub(channel)
            fragments = [
                f for msg in stub.GetShard(pb.GetShardRequest(shard_id=sid), timeout=10) for f in msg.rows.fragments
            ]
        assert fragments == cluster.fragments[sid]
        assert server.store.verify_rows(sid).damaged == []
