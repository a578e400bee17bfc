"""Scheduled mode end to end: a simulated day of passes executed by a real gateway and real nodes.

8 storage nodes (one per satellite of the sample constellation, in-process on loopback) and a
gateway in scheduled mode on a simulated clock, over the sample's contact plan for two days with
link rates scaled down (tests/integration/sky.py: uplinks 100-300 B/s, ISL 200 B/s), so a backlog
of a few MiB takes hours of passes and windows cut shards. Objects are put through the SDK while
the clock is held at T0, then the gateway's executor runs the day; the script waits for DURABLE.

Figures:
  real runtime       wall seconds from the first put until every object is DURABLE
  simulated span     simulated time from T0 until the last object is DURABLE
  uplinked / new     station->satellite bytes (fragments with their codec header and checksum)
                     per plaintext byte put; (k+m)/k times the fixed per-fragment overhead
  resent             uplinked bytes minus the bytes of every shard's rows (0: nothing resent,
                     windows that cut a shard were resumed from the node's committed rows)
  predicted-executed largest |predicted DURABLE - executed DURABLE| over the objects
  RPO / bound        (backlog DURABLE per the plan - T0) / (capacity lower bound - T0)

Usage: python bench/scheduled.py [--mib 4] [--objects 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.integration.sky: the scaled sky

from orbitvault.client.sdk import ObjectStoreClient
from orbitvault.ground.config import GatewayConfig
from orbitvault.ground.crypto import MasterKey
from orbitvault.grpc.gateway_server import serve as serve_gateway
from orbitvault.grpc.node_server import serve as serve_node
from orbitvault.storage.config import load_node_config
from tests.integration.sky import T0, scaled, write_sky

FRAGMENT = 4096
STRIPE = 65536
SEGMENT = 4096


def run(mib: float, objects: int, root: Path) -> dict[str, float | int | str]:
    con = scaled()
    toml, rc = write_sky(root / "sky", con)
    nodes = []
    for s in con.satellites:
        cfg = load_node_config(
            None,
            env={},
            overrides={
                "capacity": "1GiB",
                "listen": "127.0.0.1:0",
                "data_dir": str(root / s.name),
                "insecure": True,
                "simulation": True,
                "satellite": s.name,
                "plane": str(s.plane),
                "name": s.name.lower(),
            },
        )
        nodes.append(serve_node(cfg))
    key = root / "master.key"
    MasterKey.generate().write_file(key)
    config = GatewayConfig(
        state_dir=root / "gateway",
        listen="127.0.0.1:0",
        nodes=tuple(n.address for n in nodes),
        master_key_file=key,
        fragment_size=FRAGMENT,
        stripe_size=STRIPE,
        segment_size=SEGMENT,
        insecure=True,
        mode="scheduled",
        clock="simulated",
        sim_start=T0,
        constellation=toml,
        contact_plan=rc,
        node_refresh_s=60.0,
        repair_interval_s=3600.0,
    )
    server = serve_gateway(config, maintenance=False, shutdown_grace_s=5)
    try:
        gw = server.gateway
        sched = gw.scheduler
        assert sched is not None
        gw.create_tenant("bench")
        token = gw.create_api_key("bench").token
        size = int(mib * 2**20 / objects)
        with ObjectStoreClient(server.address, token, insecure=True, timeout_s=120) as client:
            client.create_bucket("day")
            began = time.monotonic()
            with sched.holding():
                for i in range(objects):
                    client.put("day", f"obj{i}", os.urandom(size))
                keys = [f"obj{i}" for i in range(objects)]
                predicted = {k: client.status("day", k).predicted_durable_unix_ms for k in keys}
                status = client.gateway_status()
            for i in range(objects):
                client.wait_durable("day", f"obj{i}", timeout_s=600, poll_s=0.05)
            runtime = time.monotonic() - began
            versions = {f"obj{i}": client.head("day", f"obj{i}").version_id for i in range(objects)}
        sched.wait_idle(60)
        uplinks = [ex for ex in sched.executed if ex.purpose == "store" and ex.hop == "uplink"]
        isl = [ex for ex in sched.executed if ex.purpose == "store" and ex.hop == "isl"]
        uplinked = sum(ex.bytes_sent for ex in uplinks)
        needed = 0
        for vid in versions.values():
            for stripe in gw.catalog.stripes(vid):
                for loc in stripe.shards:
                    assert loc is not None
                    store = next(n.store for n in nodes if n.store.node_id == loc.node_id)
                    rows = store.header(loc.shard_id).row_count
                    needed += sum(len(r.fragment) + 32 for r in store.read_rows(loc.shard_id, range(rows)))
        new = size * objects
        done = max(sched.durable_at.values())
        worst = max(abs(sched.durable_at[versions[k]] * 1000 - predicted[k]) for k in versions)
        rpo = (status.backlog_durable_unix_ms / 1000 - T0) / (status.backlog_bound_unix_ms / 1000 - T0)
        return {
            "machine": common.machine(),
            "objects": objects,
            "new_bytes": new,
            "geometry": "4+2, 4 KiB fragments, 64 KiB stripes, 4 KiB segments",
            "real_runtime_s": round(runtime, 2),
            "simulated_span_h": round((done - T0) / 3600, 2),
            "uplink_transfers": len(uplinks),
            "isl_forwards": len(isl),
            "cut_and_resumed": sum(ex.resumed for ex in uplinks) + sum(ex.resumed for ex in isl),
            "uplinked_bytes": uplinked,
            "shard_bytes_needed": needed,
            "resent_bytes": uplinked - needed,
            "uplinked_per_new_byte": round(uplinked / new, 4),
            "k_plus_m_over_k": 1.5,
            "per_fragment_overhead": round(uplinked / new / 1.5, 4),
            "predicted_vs_executed_ms": round(worst, 3),
            "rpo_over_bound": round(rpo, 3),
            "replans": sched.totals.replans,
        }
    finally:
        server.stop(0)
        for n in nodes:
            n.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=4.0, help="backlog of plaintext, MiB")
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ov-bench-scheduled-") as tmp:
        out = run(args.mib, args.objects, Path(tmp))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
