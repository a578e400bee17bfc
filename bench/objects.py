"""PutObject / GetObject throughput through the gateway, and the gateway's peak memory.

For each constellation (default: 6 nodes coded 4+2, then 14 nodes coded 10+4) it starts the
nodes (`orbitvault node serve`, planes round-robin over three) and a gateway
(`orbitvault gateway serve`) as processes on loopback with fresh temporary state, creates a tenant
and key with the CLI, then through the SDK:
  put   PutObject of `--size-mib` MiB streamed in 1 MiB messages (acknowledged once k+1 shards of
        every stripe are synced on distinct nodes: the direct-mode promise)
  get   GetObject of the whole object back, checked against the blake3 the put returned
MB/s are of object bytes (MB = 10^6), best of `--repeat`. The gateway's peak RSS is its VmHWM from
/proc after all rounds: with bounded memory it does not grow with `--size-mib`.

The client, the gateway and every node share the machine's cores, so the figures are for the whole
constellation on one host, not for a gateway alone.

Usage: python bench/objects.py [--size-mib 256] [--repeat 2] [--layouts 6:4+2,14:10+4] [--json]
       [--work-dir DIR]
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
from collections.abc import Iterator

import blake3
import common
import grpc

from orbitvault.client.sdk import ObjectStoreClient, StorageClass
from orbitvault.ground.crypto import MasterKey

BLOCK = 16 * 2**20  # random source data, streamed over and over (the gateway encrypts it anyway)
CHUNK = 2**20


def machine() -> str:
    return f"{common.machine()}, grpcio {grpc.__version__}"


def _listening(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    m = re.match(r"^listening on (\S+)$", line)
    if m is None:
        proc.kill()
        raise SystemExit(f"{what} did not start: {line!r}")
    return m.group(1)


def start_node(data_dir: str, plane: str, capacity: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "orbitvault", "node", "serve", "--data-dir", data_dir, "--insecure"]
    cmd += ["--capacity", str(capacity), "--listen", "127.0.0.1:0", "--log-level", "warning"]
    env = {**os.environ, "ORBITVAULT_NODE_PLANE": plane, "ORBITVAULT_NODE_NAME": os.path.basename(data_dir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    return proc, _listening(proc, "node")


def write_config(tmp: str, nodes: list[str]) -> str:
    key_file = os.path.join(tmp, "master.key")
    MasterKey.generate().write_file(key_file)
    path = os.path.join(tmp, "gateway.toml")
    with open(path, "w") as f:
        f.write(f'state_dir = "{os.path.join(tmp, "gateway")}"\nlisten = "127.0.0.1:0"\ninsecure = true\n')
        f.write("nodes = [" + ", ".join(f'"{a}"' for a in nodes) + "]\n")
        f.write(f'master_key_file = "{key_file}"\nrepair_interval_s = 3600\n')
    return path


def cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "orbitvault", "gateway", *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"orbitvault gateway {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def source(size: int, block: bytes) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        for i in range(0, len(block), CHUNK):
            n = min(CHUNK, size - sent)
            if n <= 0:
                return
            yield block[i : i + n]
            sent += n


def expected_blake3(size: int, block: bytes) -> bytes:
    h = blake3.blake3()
    for chunk in source(size, block):
        h.update(chunk)
    return h.digest()


def run_layout(
    n_nodes: int, k: int, m: int, size: int, repeat: int, block: bytes, work_dir: str | None
) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix=f"ov-bench-objects-{n_nodes}-", dir=work_dir)
    procs: list[subprocess.Popen[str]] = []
    try:
        capacity = 4 * size * (k + m) // k + 2**30
        addresses = []
        for i in range(n_nodes):
            proc, address = start_node(os.path.join(tmp, f"node{i:02d}"), str(i % 3), capacity)
            procs.append(proc)
            addresses.append(address)
        config = write_config(tmp, addresses)
        cli("tenant", "create", "bench", "--config", config)
        token = cli("key", "create", "bench", "--config", config)
        gw = subprocess.Popen(
            [sys.executable, "-m", "orbitvault", "gateway", "serve", "--config", config, "--log-level", "warning"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(gw)
        address = _listening(gw, "gateway")
        want = expected_blake3(size, block)
        best = {"put": 0.0, "get": 0.0, "gateway_cpu_s_per_gib": float("inf"), "nodes_cpu_s_per_gib": float("inf")}
        node_pids = [p.pid for p in procs[:-1]]
        with ObjectStoreClient(address, token, insecure=True) as c:
            c.create_bucket("bench", storage_class=StorageClass(k, m))
            c.put("bench", "warm-up", b"x" * CHUNK)
            for r in range(repeat):
                kinds = {"gateway_cpu_s_per_gib": [gw.pid], "nodes_cpu_s_per_gib": node_pids}
                cpu0 = {kind: common.cpu_seconds(pids) for kind, pids in kinds.items()}
                t0 = time.perf_counter()
                info = c.put("bench", f"obj-{r}", source(size, block), size=size)
                t_put = time.perf_counter() - t0
                for kind, pids in kinds.items():
                    best[kind] = min(best[kind], (common.cpu_seconds(pids) - cpu0[kind]) / (size / 2**30))
                assert info.etag == want, "the gateway stored other bytes than were sent"
                t0 = time.perf_counter()
                h = blake3.blake3()
                got = 0
                for chunk in c.open("bench", f"obj-{r}"):
                    h.update(chunk)
                    got += len(chunk)
                t_get = time.perf_counter() - t0
                assert got == size and h.digest() == want, "GetObject returned other bytes"
                best["put"] = max(best["put"], size / t_put / 1e6)
                best["get"] = max(best["get"], size / t_get / 1e6)
                c.delete("bench", f"obj-{r}")
        best["peak_rss_mib"] = peak_rss_mib(gw.pid)
        return {k_: round(v, 1) for k_, v in best.items()}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="object size (default 256)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the best is reported (default 2)")
    ap.add_argument("--layouts", default="6:4+2,14:10+4", help="nodes:k+m, comma-separated")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--work-dir", help="where the nodes and the gateway keep their state (default: the temp dir)")
    args = ap.parse_args()

    size = args.size_mib * 2**20
    block = os.urandom(BLOCK)
    results = {}
    for layout in args.layouts.split(","):
        n, km = layout.split(":")
        k, m = (int(x) for x in km.split("+"))
        results[f"{n} nodes, {k}+{m}"] = run_layout(int(n), k, m, size, args.repeat, block, args.work_dir)
    info = {"machine": machine(), "object_mib": args.size_mib, "repeat": args.repeat, "results": results}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"# ObjectStore through the gateway, node and gateway processes on loopback — {info['machine']}")
    print(f"# one {args.size_mib} MiB object per round, 16 MiB stripes, 64 KiB fragments, best of {args.repeat}")
    print(
        f"{'constellation':<16} {'put MB/s':>9} {'get MB/s':>9} {'gateway peak RSS MiB':>21}"
        f" {'put CPU-s/GiB gateway':>22} {'nodes':>6}"
    )
    for name, r in results.items():
        print(
            f"{name:<16} {r['put']:>9.1f} {r['get']:>9.1f} {r['peak_rss_mib']:>21.1f}"
            f" {r['gateway_cpu_s_per_gib']:>22.2f} {r['nodes_cpu_s_per_gib']:>6.2f}"
        )


if __name__ == "__main__":
    main()
