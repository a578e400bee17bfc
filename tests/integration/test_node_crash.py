"""Crash safety of `orbitvault node serve`: kill -9 and SIGTERM during PutShard streams.

Whatever the instant, after a restart on the same data dir every shard is either whole and
readable or absent, acknowledged shards are all there, the byte accounting matches what is stored,
and the store opens cleanly.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from tests.integration.conftest import NodeProcess, TestShard

pytestmark = pytest.mark.slow

# 4 MiB shards: big enough that a kill can land while a put is being committed.
FAT = Geometry(2, 1, fragment_size=64 * 1024, stripe_size=2 * 64 * 1024 * 64)
ROWS_PER_MESSAGE = 4


def stalled(shard: TestShard, messages: int, gate: threading.Event) -> Iterator[pb.PutShardRequest]:
    """The shard's PutShard stream, cut after `messages` messages (start included) until `gate`."""
    for i, msg in enumerate(shard.requests(ROWS_PER_MESSAGE)):
        if i == messages:
            gate.wait(60)
            return
        yield msg
    gate.wait(60)  # everything sent, but the stream is not half-closed


def check_store(
    node: NodeProcess, acked: list[TestShard], absent: list[TestShard], maybe: list[TestShard]
) -> dict[str, int]:
    """Acked shards whole, absent ones absent, maybe-ones whole or absent; accounting consistent."""
    with node.channel() as channel:
        stub = shard_store_pb2_grpc.ShardStoreStub(channel)
        listed = {
            s.header.shard_id: s.stored_bytes for s in stub.ListShards(pb.ListShardsRequest(page_size=1000)).shards
        }
        info = stub.NodeInfo(pb.NodeInfoRequest())
        assert info.used_bytes == sum(listed.values())
        assert info.shard_count == len(listed)
        outcome = {"present": 0, "absent": 0}
        for shard in acked + absent + maybe:
            if shard.shard_id not in listed:
                assert shard not in acked, "an acknowledged shard was lost"
                with pytest.raises(grpc.RpcError) as err:
                    stub.HeadShard(pb.HeadShardRequest(shard_id=shard.shard_id))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                outcome["absent"] += 1
                continue
            assert shard not in absent, "a shard whose stream never ended was stored"
            frags = [f for m in stub.GetShard(pb.GetShardRequest(shard_id=shard.shard_id)) for f in m.rows.fragments]
            assert frags == shard.fragments, "a stored shard is not whole"
            outcome["present"] += 1
        assert set(listed) <= {s.shard_id for s in acked + maybe}
        return outcome


def test_kill9_during_puts_leaves_whole_shards_or_nothing(tmp_path: Path, spawn_node: Any, make_shard: Any) -> None:
    data_dir = tmp_path / "node"
    acked: list[TestShard] = []
    absent: list[TestShard] = []
    maybe: list[TestShard] = []
    rnd = random.Random(3)
    for round_ in range(4):
        node = spawn_node(data_dir)
        check_store(node, acked, absent, maybe)  # the store opened cleanly after the last kill
        with node.channel() as channel:
            stub = shard_store_pb2_grpc.ShardStoreStub(channel)
            done = make_shard(geometry=FAT, data_len=FAT.stripe_size - 1000)
            assert stub.PutShard(done.requests(ROWS_PER_MESSAGE), timeout=30).complete
            acked.append(done)

            gate = threading.Event()
            futures = []
            rows_messages = -(-len(done.fragments) // ROWS_PER_MESSAGE)
            for messages in (1, 1 + rows_messages // 2, 1 + rows_messages):  # after 0 rows, some, all
                s = make_shard(geometry=FAT, data_len=FAT.stripe_size - 1000)
                futures.append(stub.PutShard.future(stalled(s, messages, gate)))
                absent.append(s)
            time.sleep(0.4)  # let the stalled streams reach the node
            # A whole stream racing the kill: committed or not, never half there.
            racing = make_shard(geometry=FAT, data_len=FAT.stripe_size - 1000)
            futures.append(stub.PutShard.future(racing.requests(ROWS_PER_MESSAGE)))
            maybe.append(racing)
            time.sleep(rnd.uniform(0, 0.08) if round_ else 0.0)
            node.kill9()
            gate.set()
            for f in futures[:3]:
                assert f.exception(timeout=30) is not None
    node = spawn_node(data_dir)
    result = check_store(node, acked, absent, maybe)
    assert result["present"] >= len(acked)
    node.terminate()


def test_sigterm_cancels_an_unfinished_put_after_the_grace_period(
    tmp_path: Path, spawn_node: Any, make_shard: Any
) -> None:
    data_dir = tmp_path / "node"
    node = spawn_node(data_dir, env={"ORBITVAULT_NODE_SHUTDOWN_GRACE_S": "1"})
    done, cut = make_shard(), make_shard()
    gate = threading.Event()
    with node.channel() as channel:
        stub = shard_store_pb2_grpc.ShardStoreStub(channel)
        stub.PutShard(done.requests(), timeout=30)
        future = stub.PutShard.future(stalled(cut, 3, gate))
        time.sleep(0.3)
        began = time.monotonic()
        assert node.terminate(timeout=30) == 0
        assert time.monotonic() - began < 15
        err = future.exception(timeout=30)
        assert err is not None and err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        gate.set()
    log = node.log()
    assert "signal received" in log and "node stopped" in log and "Traceback" not in log
    restarted = spawn_node(data_dir)
    check_store(restarted, [done], [cut], [])
    restarted.terminate()


def test_sigterm_lets_an_in_flight_put_finish(tmp_path: Path, spawn_node: Any, make_shard: Any) -> None:
    data_dir = tmp_path / "node"
    node = spawn_node(data_dir, env={"ORBITVAULT_NODE_SHUTDOWN_GRACE_S": "30"})
    shard = make_shard()
    gate = threading.Event()
    requests = list(shard.requests(ROWS_PER_MESSAGE))

    def slow() -> Iterator[pb.PutShardRequest]:
        yield from requests[:3]
        gate.wait(60)
        yield from requests[3:]

    with node.channel() as channel:
        stub = shard_store_pb2_grpc.ShardStoreStub(channel)
        future = stub.PutShard.future(slow())
        time.sleep(0.3)
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert node.proc.poll() is None, "the node must wait for the in-flight put"
        with pytest.raises(grpc.RpcError) as refused:  # but take no new calls
            stub.NodeInfo(pb.NodeInfoRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        assert future.result(timeout=30).complete
    assert node.proc.wait(30) == 0
    restarted = spawn_node(data_dir)
    check_store(restarted, [shard], [], [])
    restarted.terminate()
