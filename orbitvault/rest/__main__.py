"""`python -m orbitvault.rest`: a restic REST endpoint for tests, benchmarks and trying it out.

Two ways to get a gateway:
  --gateway-config FILE      the gateway of that TOML file, over its storage nodes (gRPC)
  --local-nodes N --dir DIR  start N storage node processes under DIR and a gateway on DIR/gateway
                             (a fresh master key in DIR/master.key; reused when DIR exists)

With `--tenant NAME` the tenant is created if missing and a new API key of `--key-mode` is made;
its token is printed. The first line printed is `listening on URL`, then `token TOKEN` and a
`repository rest:...` line restic can use. Serves until SIGTERM or Ctrl-C.

The production entry point is `serve_rest(gateway, settings)` wired by the `orbitvault gateway`
command; this runner does no background repair or checkpoints (only GC of crashed uploads at start).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orbitvault.errors import AlreadyExists, OrbitVaultError
from orbitvault.ground.config import GatewayConfig, load_gateway_config
from orbitvault.ground.crypto import MasterKey
from orbitvault.ground.gateway import Gateway
from orbitvault.ground.model import KeyMode
from orbitvault.rest.config import load_rest_settings
from orbitvault.rest.server import serve_rest

_LISTENING = re.compile(r"^listening on (\S+)$")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with _gateway(args) as (gateway, config):
            settings = load_rest_settings(
                gateway=config,
                overrides={
                    "listen": args.listen,
                    "tls_cert": args.tls_cert,
                    "tls_key": args.tls_key,
                    "append_only": args.append_only or None,
                    "no_verify_upload": args.no_verify_upload or None,
                    "max_repo_size": args.max_repo_size,
                    "access_log": args.access_log,
                    "prometheus": False if args.no_prometheus else None,
                },
            )
            token = _key(gateway, args.tenant, args.key_mode) if args.tenant else None
            server = serve_rest(gateway, settings)
            try:
                print(f"listening on {server.url}", flush=True)
                if token is not None:
                    scheme, _, host = server.url.partition("://")
                    print(f"token {token}", flush=True)
                    print(f"repository rest:{scheme}://{args.tenant}:{token}@{host}/<bucket>/", flush=True)
                while not stop.wait(0.5):
                    pass
            finally:
                server.stop()
    except OrbitVaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m orbitvault.rest", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gateway-config", type=Path, help="gateway TOML (its nodes must be running)")
    src.add_argument("--local-nodes", type=int, metavar="N", help="start N node processes under --dir")
    ap.add_argument("--dir", type=Path, help="state for --local-nodes (nodes, gateway, master key)")
    ap.add_argument("--node-capacity", default="8GiB", help="capacity of each local node")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--append-only", action="store_true")
    ap.add_argument("--no-verify-upload", action="store_true")
    ap.add_argument("--max-repo-size", help='quota per repository, e.g. "100GiB"')
    ap.add_argument("--access-log", help='combined log to this file, or "-" for stderr')
    ap.add_argument("--no-prometheus", action="store_true")
    ap.add_argument("--tenant", help="create this tenant if missing and a new API key for it")
    ap.add_argument("--key-mode", default="full", choices=[m.value for m in KeyMode])
    return ap


def _key(gateway: Gateway, tenant: str, mode: str) -> str:
    with contextlib.suppress(AlreadyExists):
        gateway.create_tenant(tenant)
    return gateway.create_api_key(tenant, KeyMode(mode)).token


@contextlib.contextmanager
def _gateway(args: argparse.Namespace) -> Iterator[tuple[Gateway, GatewayConfig]]:
    # gRPC adapters (node links with the gateway's mTLS), so imported only here in the runner
    from orbitvault.grpc.gateway_server import build_directory, load_master_key

    procs: list[subprocess.Popen[str]] = []
    try:
        if args.local_nodes:
            if args.dir is None:
                raise SystemExit("--local-nodes needs --dir")
            config = _local(args.dir, args.local_nodes, args.node_capacity, procs)
        else:
            config = load_gateway_config(args.gateway_config)
        key = load_master_key(config)
        directory = build_directory(config)
        try:
            gateway = Gateway(config, directory, key)
            try:
                gateway.refresh_nodes(force=True)
                gateway.collect_garbage()
                yield gateway, config
            finally:
                gateway.close()
        finally:
            directory.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _local(root: Path, n: int, capacity: str, procs: list[subprocess.Popen[str]]) -> GatewayConfig:
    """N node processes on loopback (planes round-robin over three) and a gateway config for them."""
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / "master.key"
    if not key_file.exists():
        MasterKey.generate().write_file(key_file)
    addresses = []
    for i in range(n):
        addresses.append(_start_node(root, i, capacity, procs))
    return GatewayConfig(
        state_dir=root / "gateway",
        nodes=tuple(addresses),
        master_key_file=key_file,
        repair_interval_s=3600.0,
        insecure=True,  # loopback processes of one machine: plaintext gRPC, as the nodes below
    )


def _start_node(root: Path, i: int, capacity: str, procs: list[subprocess.Popen[str]]) -> str:
    data = root / f"node{i:02d}"
    cmd = [sys.executable, "-m", "orbitvault", "node", "serve", "--data-dir", str(data)]
    cmd += ["--capacity", capacity, "--listen", "127.0.0.1:0", "--log-level", "warning", "--insecure"]
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_NODE_")}
    env.update(ORBITVAULT_NODE_PLANE=str(i % 3), ORBITVAULT_NODE_NAME=f"sat-{i}")
    with open(root / f"node{i:02d}.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    m = _LISTENING.match(line)
    if m is None:
        raise SystemExit(f"node {i} did not start: {line!r} (see {root / f'node{i:02d}.log'})")
    return m.group(1)


if __name__ == "__main__":
    sys.exit(main())
