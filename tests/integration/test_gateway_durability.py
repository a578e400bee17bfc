"""Durability through the gateway: nodes down, a node lost for good, the gateway's state lost.

Real node servers on loopback (in-process), 4+2 objects of several stripes. Reads go through the
SDK, so a pass here means a client sees byte-identical objects, not just a healthy catalog.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orbitvault.cli import cli
from orbitvault.client.sdk import DurabilityState
from orbitvault.errors import NotFound, Unavailable
from tests.integration.conftest import GW_PLAIN_PER_STRIPE as PPS


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _fill(client: Any, bucket: str, count: int = 4) -> dict[str, bytes]:
    client.create_bucket(bucket)
    objects = {}
    for i in range(count):
        data = _data(i * PPS + 777 * i + 1, i)
        client.put(bucket, f"obj-{i}", data)
        objects[f"obj-{i}"] = data
    return objects


def _wait_all_up(client: Any, n: int, timeout: float = 10.0) -> None:
    """Until the gateway sees every node answering again (its links retry with a short backoff)."""
    deadline = time.monotonic() + timeout
    while sum(node.reachability == "in_contact" for node in client.gateway_status().nodes) < n:
        assert time.monotonic() < deadline, "restarted nodes not seen by the gateway"
        time.sleep(0.1)


def _reads_back(client: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        assert client.get(bucket, key) == data, key


def test_m_nodes_down_reads_succeed_m_plus_one_is_unavailable(gw: Any) -> None:
    c = gw.client
    objects = _fill(c, "durable")
    sky = gw.sky
    sky.stop_node(0)
    sky.stop_node(4)
    _reads_back(c, "durable", objects)  # m = 2 down: every stripe still has k shards
    assert c.get("durable", "obj-3", offset=PPS - 10, length=PPS) == objects["obj-3"][PPS - 10 : 2 * PPS - 10]
    # A put needs k+1 = 5 nodes and only 4 are up: it is refused and stores nothing.
    with pytest.raises(Unavailable, match=r"need|nodes"):
        c.put("durable", "while-down", b"x" * 1000)
    sky.stop_node(2)
    with pytest.raises(Unavailable, match="retry"):
        c.get("durable", "obj-2")
    c.head("durable", "obj-2")  # the catalog still knows it: nothing was lost, only unreachable
    for i in (0, 2, 4):
        sky.restart_node(i)
    _wait_all_up(c, len(sky.nodes))
    _reads_back(c, "durable", objects)
    assert [o.key for o in c.list("durable")] == sorted(objects)  # the refused put left nothing


@pytest.mark.parametrize("constellation", [7], indirect=True)
def test_a_node_lost_for_good_is_rebuilt_elsewhere(constellation: Any) -> None:
    sky = constellation
    server = sky.start_gateway(node_grace_s=0.3)
    server.gateway.create_tenant("acme")
    c = sky.client(server.address, server.gateway.create_api_key("acme").token)
    objects = _fill(c, "repair", count=5)
    victim = 1
    victim_id = sky.nodes[victim].store.node_id
    held = sky.nodes[victim].store.shard_count()
    assert held > 0
    sky.stop_node(victim)
    time.sleep(0.5)  # past the grace period: the node is gone, not just down
    report = server.gateway.repair_once()
    assert victim_id in report.nodes_gone
    assert report.shards_rebuilt >= held and report.shards_failed == 0, report.errors
    assert server.gateway.repair_once().backlog == 0
    for key in objects:
        st = c.status("repair", key)
        assert st.state is DurabilityState.DURABLE and st.shards_in_orbit == st.shards_total, key
    # Every stripe is back to k+m on the six survivors: any two more may fail and all still reads.
    sky.stop_node(3)
    sky.stop_node(5)
    _reads_back(c, "repair", objects)
    assert c.gateway_status().repair.shards_missing == 0


def test_rebuild_from_the_nodes_alone_restores_the_catalog(gw: Any) -> None:
    sky = gw.sky
    acme = gw.client
    objects = _fill(acme, "photos", count=3)
    from orbitvault.ground.model import KeyMode

    gw.gateway.create_tenant("globex")
    globex_token = gw.gateway.create_api_key("globex", KeyMode.APPEND_ONLY).token
    globex = sky.client(gw.server.address, globex_token)
    globex.create_bucket("ledger")
    globex.put("ledger", "2024", b"append-only ledger")
    seq = gw.gateway.checkpoint()
    assert seq >= 1
    # After the checkpoint: a new object, an overwrite and a delete, known only from shard headers.
    late = _data(PPS + 5, 99)
    acme.put("photos", "late", late)
    objects["late"] = late
    objects["obj-1"] = b"replaced after the checkpoint"
    acme.put("photos", "obj-1", objects["obj-1"])
    acme.delete("photos", "obj-0")
    del objects["obj-0"]
    config_path = sky.toml()
    gw.server.stop(0)
    shutil.rmtree(sky.tmp / "gateway")

    result = CliRunner().invoke(cli, ["gateway", "rebuild", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output and f"checkpoint {seq}" in result.output

    server = sky.start_gateway()
    acme2 = sky.client(server.address, gw.token)  # keys come back with the catalog
    assert [o.key for o in acme2.list("photos")] == sorted(objects)
    _reads_back(acme2, "photos", objects)
    with pytest.raises(NotFound):
        acme2.head("photos", "obj-0")
    globex2 = sky.client(server.address, globex_token)
    assert globex2.get("ledger", "2024") == b"append-only ledger"
    # A second rebuild into a state dir that is no longer empty is refused with a clear message.
    server.stop(0)
    again = CliRunner().invoke(cli, ["gateway", "rebuild", "--config", str(config_path)])
    assert again.exit_code != 0 and "empty" in again.output and "Traceback" not in again.output


def test_nodes_never_hold_plaintext(gw: Any) -> None:
    marker = b"ORBITVAULT-PLAINTEXT-MARKER:"
    data = (marker * (3 * PPS // len(marker) + 1))[: 3 * PPS]
    gw.client.create_bucket("secret-bucket-name")
    gw.client.put("secret-bucket-name", "secret-key-name", data, metadata={"note": "secret-metadata-value"})
    assert gw.client.get("secret-bucket-name", "secret-key-name") == data
    scanned = 0
    for node in gw.sky.nodes:
        for path in Path(node.data_dir).rglob("*"):
            if not path.is_file():
                continue
            raw = path.read_bytes()
            scanned += len(raw)
            for needle in (marker, b"secret-key-name", b"secret-bucket-name", b"secret-metadata-value", b"acme"):
                assert needle not in raw, (needle, path)
    assert scanned > 6 * 3 * PPS // 4  # the shards really are in those files


def test_nodes_dying_mid_read_are_survived(gw: Any) -> None:
    c = gw.client
    c.create_bucket("midread")
    data = _data(12 * PPS, 5)
    c.put("midread", "big", data)
    with c.open("midread", "big") as reader:
        got = [next(reader)]
        gw.sky.stop_node(0)  # a data shard's node, then a second one: still k of every stripe left
        gw.sky.stop_node(1)
        got.extend(reader)
    assert b"".join(got) == data
