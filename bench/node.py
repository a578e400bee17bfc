"""ShardStore PutShard / GetShard throughput over loopback gRPC, against a node in its own process.

Starts `orbitvault node serve` on a fresh temporary store (port 0), then:
  put   PutShard of `--shards` shards, 1 MiB messages (16 rows of 64 KiB); each put is one
        synced LMDB commit, acknowledged only after it (what direct mode promises)
  get   GetShard of every shard back, every row blake3-verified by the node on the way out
once for each `--streams` count of calls in flight at once (a gateway writes many stripes to a
node at a time). MB/s are of shard payload (fragments), MB = 10^6 bytes.
Fragments are random bytes of the right lengths with real checksums: the node checks lengths and
checksums, never the codec's contents, so encoding is left out of what is measured.

One put is receive-then-commit (all-or-nothing: the shard is buffered until its last row, then
committed in one synced transaction), so a single stream cannot overlap the two; concurrent
streams do.

Usage: python bench/node.py [--shard-mib 16] [--shards 16] [--streams 1,2] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import blake3
import common
import grpc

from orbitvault.erasure.layout import Geometry
from orbitvault.grpc import convert
from orbitvault.grpc.v1 import shard_store_pb2 as pb
from orbitvault.grpc.v1 import shard_store_pb2_grpc
from orbitvault.storage.header import ShardHeader

ROWS_PER_MESSAGE = 16  # 16 x 64 KiB: about 1 MiB per message


def machine() -> str:
    return f"{common.machine()}, grpcio {grpc.__version__}"


def start_node(data_dir: str, capacity: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "orbitvault", "node", "serve", "--data-dir", data_dir, "--insecure"]
    cmd += ["--capacity", str(capacity), "--listen", "127.0.0.1:0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    m = re.match(r"^listening on (\S+)$", line)
    if m is None:
        proc.kill()
        raise SystemExit(f"node did not start: {line!r}")
    return proc, m.group(1)


def make_headers(geometry: Geometry, data_len: int, count: int) -> list[ShardHeader]:
    return [
        ShardHeader(
            os.urandom(32), os.urandom(32), 0, 1, 0, geometry, data_len, created_unix_ms=int(time.time() * 1000)
        )
        for _ in range(count)
    ]


def put_stream(header: ShardHeader, frags: list[bytes], sums: list[bytes]) -> Iterator[pb.PutShardRequest]:
    yield pb.PutShardRequest(start=pb.PutShardStart(header=convert.header_to_proto(header)))
    for r in range(0, len(frags), ROWS_PER_MESSAGE):
        batch = pb.RowBatch(
            first_row=r, fragments=frags[r : r + ROWS_PER_MESSAGE], checksums=sums[r : r + ROWS_PER_MESSAGE]
        )
        yield pb.PutShardRequest(rows=batch)


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    nbytes = fn()
    return nbytes, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-mib", type=int, default=16, help="payload per shard (default 16)")
    ap.add_argument("--shards", type=int, default=16, help="shards per round (default 16)")
    ap.add_argument("--streams", default="1,2", help="calls in flight at once, comma-separated (default 1,2)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported (default 3)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    geometry = Geometry(4, 2, fragment_size=64 * 1024, stripe_size=64 * 2**20)
    data_len = min(args.shard_mib * 2**20 * geometry.k, geometry.stripe_size)
    probe = make_headers(geometry, data_len, 1)[0]
    rows = probe.row_count
    frags = [os.urandom(probe.fragment_len(r)) for r in range(rows)]
    sums = [blake3.blake3(f).digest() for f in frags]
    payload = sum(map(len, frags))
    stream_counts = [int(x) for x in args.streams.split(",")]
    capacity = 2 * payload * (args.shards + 1) + 2**30

    tmp = tempfile.mkdtemp(prefix="ov-bench-node-")
    proc, address = start_node(os.path.join(tmp, "store"), capacity)
    results: dict[int, dict[str, float]] = {}
    try:
        channel = grpc.insecure_channel(address, options=convert.CHANNEL_OPTIONS)
        stub = shard_store_pb2_grpc.ShardStoreStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)

        def put_one(h: ShardHeader) -> int:
            stub.PutShard(put_stream(h, frags, sums), timeout=300)
            return payload

        def get_one(h: ShardHeader) -> int:
            n = 0
            for msg in stub.GetShard(pb.GetShardRequest(shard_id=h.shard_id), timeout=300):
                n += sum(len(f) for f in msg.rows.fragments)
            assert n == payload
            return n

        put_one(make_headers(geometry, data_len, 1)[0])  # warm-up: connection, page cache, LMDB map
        for streams in stream_counts:
            best = {"put": 0.0, "get": 0.0}
            with ThreadPoolExecutor(streams) as pool:
                for _ in range(args.repeat):
                    headers = make_headers(geometry, data_len, args.shards)
                    for name, fn in (("put", put_one), ("get", get_one)):
                        nbytes, secs = timed(lambda fn=fn, hs=headers, p=pool: sum(p.map(fn, hs)))
                        best[name] = max(best[name], nbytes / secs / 1e6)
                    for h in headers:  # keep the store small between rounds
                        stub.DeleteShard(pb.DeleteShardRequest(shard_id=h.shard_id))
            results[streams] = {k: round(v, 1) for k, v in best.items()}
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    info = {
        "machine": machine(),
        "shard_mib": payload / 2**20,
        "rows_per_shard": rows,
        "message_bytes": ROWS_PER_MESSAGE * len(frags[0]),
        "shards": args.shards,
        "repeat": args.repeat,
        "results": {f"{n} stream(s)": r for n, r in results.items()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"# ShardStore over loopback gRPC — {info['machine']}")
    print(
        f"# {args.shards} shards of {payload / 2**20:.1f} MiB ({rows} rows of 64 KiB), "
        f"~1 MiB messages, best of {args.repeat}"
    )
    print(f"{'streams':>7} {'put MB/s':>9} {'get MB/s':>9}   goal >= 500")
    for streams, r in results.items():
        print(f"{streams:>7} {r['put']:>9.1f} {r['get']:>9.1f}")


if __name__ == "__main__":
    main()
