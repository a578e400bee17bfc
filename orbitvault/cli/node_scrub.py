"""`orbitvault node scrub` and `orbitvault node irradiate`: the scrubbing daemon and fault injection.

`scrub` runs the scrubber as its own process on a node's store (LMDB is multi-process, so it runs
beside `node serve`), reading sibling rows from the configured peers over gRPC. `irradiate` flips
random bits in a simulation store and prints exactly what it flipped. Errors raised on purpose
become one-line messages with a non-zero exit, never tracebacks.

Exit codes: 0 ok; 1 error; 3 (`scrub --once`) the pass found damage it could not repair.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from orbitvault.cli.errors import cli_errors
from orbitvault.storage.config import load_node_config

EXIT_UNRECOVERABLE = 3


@click.command("scrub")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Node config (TOML): data_dir, capacity, peers, [scrub]. ORBITVAULT_NODE_* override it.",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="The node's store directory.")
@click.option("--capacity", help='The node\'s capacity, e.g. "100GiB" (as configured for `node serve`).')
@click.option("--rate", "rate_mb_s", type=float, help="Verification rate limit in MB/s; 0 = unthrottled.")
@click.option("--interval", "interval_s", type=float, help="Seconds between passes.")
@click.option("--once", is_flag=True, help="Run one pass (or finish the one in progress), print a summary, exit.")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port (0 = off).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the summary as JSON.")
@click.option(
    "--insecure", is_flag=True, default=None, help="Call peers in plaintext (local development; else tls_* keys)."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def scrub(
    config_path: Path | None,
    data_dir: Path | None,
    capacity: str | None,
    rate_mb_s: float | None,
    interval_s: float | None,
    once: bool,
    metrics_port: int | None,
    as_json: bool,
    insecure: bool | None,
    log_level: str,
) -> None:
    """Verify every shard of the node's store and repair damage, pass after pass.

    Damaged headers are corrected in place; damaged rows are rebuilt from the same row of k
    sibling shards read from the peers. Resumes an interrupted pass. Stops on SIGTERM or Ctrl-C.
    """
    with cli_errors():
        config = load_node_config(
            config_path,
            overrides={
                "data_dir": data_dir,
                "capacity": capacity,
                "scrub.rate_mb_s": rate_mb_s,
                "scrub.interval_s": interval_s,
                "metrics_port": metrics_port,
                "insecure": insecure,
            },
        )
        from orbitvault.grpc.node_server import configure_logging
        from orbitvault.grpc.peers import GrpcPeerRows
        from orbitvault.grpc.tls import tls_files
        from orbitvault.storage.metrics import start_metrics_server
        from orbitvault.storage.scrubber import Scrubber
        from orbitvault.storage.store import ShardStore

        configure_logging(log_level)
        store = ShardStore(config.data_dir, capacity_bytes=config.capacity, create=False)
        # Peers are called with the node's own certificate (they accept node certificates only).
        peers = GrpcPeerRows(config.peers, tls=tls_files(config, "node")) if config.peers else None
        metrics = None
        try:
            if config.metrics_port:
                host = config.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
                metrics, port = start_metrics_server(config.metrics_port, store, addr=host)
                click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
            scrubber = Scrubber(
                store, peers, rate_bytes_per_s=config.scrub.rate_bytes_per_s, interval_s=config.scrub.interval_s
            )
            stop = threading.Event()
            with _stop_on_signals(stop):
                if once:
                    result = scrubber.run_pass(stop)
                else:
                    scrubber.run_forever(stop)
                    return
        finally:
            if metrics is not None:
                metrics.shutdown()  # type: ignore[attr-defined]
            if peers is not None:
                peers.close()
            store.close()
        summary = {
            "completed": result.completed,
            "seconds": round(result.seconds, 3),
            "mb_per_s": round(result.mb_per_s, 1),
            "shards_verified": result.shards_verified,
            "rows_verified": result.rows_verified,
            "bytes_verified": result.bytes_verified,
            "damaged_found": result.damaged_found,
            "repaired_in_place": result.repaired_in_place,
            "repaired_from_peers": result.repaired_from_peers,
            "unrecoverable": [d.to_json() for d in result.unrecoverable_damage],
        }
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(
                f"scrub pass {'completed' if result.completed else 'stopped'}: {result.shards_verified} shard(s), "
                f"{result.rows_verified} row(s), {result.bytes_verified / 1e6:.1f} MB in {result.seconds:.2f} s "
                f"({result.mb_per_s:.0f} MB/s); damaged {result.damaged_found}, repaired in place "
                f"{result.repaired_in_place}, from peers {result.repaired_from_peers}, "
                f"unrecoverable {len(result.unrecoverable_damage)} shard(s)"
            )
            for d in result.unrecoverable_damage:
                click.echo(f"UNRECOVERABLE {d.describe()}")
        if result.unrecoverable_damage:
            click.get_current_context().exit(EXIT_UNRECOVERABLE)


@click.command("irradiate")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The store to damage (or give --config).",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Node config (TOML).")
@click.option("--count", type=click.IntRange(min=0), help="Flip exactly this many bits (upsets), chosen uniformly.")
@click.option("--rate", type=float, help="Upsets per bit per day outside the SAA (LEO: about 1e-6).")
@click.option("--duration", help='Simulated time for --rate: seconds, or "90m", "6h", "2d".')
@click.option("--acceleration", type=float, default=1.0, show_default=True, help="Multiplies the rate (tests).")
@click.option("--saa-burst", type=float, help="South Atlantic Anomaly: rate multiplier inside the anomaly.")
@click.option(
    "--saa-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of the duration spent in the anomaly (one contiguous pass).",
)
@click.option(
    "--mbu-share",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of upsets that also flip the adjacent bit (multi-bit upsets).",
)
@click.option("--seed", type=int, help="Random seed (printed, so a run can be repeated).")
@click.option("--force", is_flag=True, help="Damage a store that is not marked as a simulation store.")
@click.option("--dry-run", is_flag=True, help="Choose and print the flips without applying them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def irradiate(
    data_dir: Path | None,
    config_path: Path | None,
    count: int | None,
    rate: float | None,
    duration: str | None,
    acceleration: float,
    saa_burst: float | None,
    saa_fraction: float,
    mbu_share: float,
    seed: int | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Flip random bits in a node's stored rows, checksums and headers; print what was flipped.

    Either --count N, or --rate R --duration D (Poisson number of upsets, optionally concentrated
    in a South Atlantic Anomaly pass with --saa-burst). For tests and drills only.
    """
    with cli_errors():
        from orbitvault.errors import InvalidArgument
        from orbitvault.storage.irradiate import irradiate as run_irradiate
        from orbitvault.storage.irradiate import parse_duration
        from orbitvault.storage.store import ShardStore

        if (count is None) == (rate is None):
            raise InvalidArgument("give --count N, or --rate R with --duration D")
        if rate is not None and duration is None:
            raise InvalidArgument("--rate needs --duration (e.g. --duration 1d)")
        if count is not None and (duration is not None or saa_burst is not None):
            raise InvalidArgument("--duration and --saa-burst go with --rate, not --count")
        path, capacity = _store_location(data_dir, config_path)
        with ShardStore(path, capacity_bytes=capacity, create=False) as store:
            result = run_irradiate(
                store,
                count=count,
                rate=rate,
                duration_s=parse_duration(duration) if duration is not None else None,
                acceleration=acceleration,
                saa_burst=saa_burst,
                saa_fraction=saa_fraction,
                mbu_share=mbu_share,
                seed=seed,
                force=force,
                dry_run=dry_run,
            )
            node_id = store.node_id.hex()
    if as_json:
        out: dict[str, Any] = {"store": str(path), "node_id": node_id, "applied": not dry_run, **result.to_json()}
        click.echo(json.dumps(out, indent=2))
        return
    for f in result.flips:
        click.echo(("would flip " if dry_run else "flipped ") + f.describe())
    expected = f", expected {result.expected_upsets:.3g}" if result.expected_upsets is not None else ""
    click.echo(
        f"{'would flip' if dry_run else 'flipped'} {len(result.flips)} bit(s) in {result.upsets} upset(s){expected} "
        f"over {result.bits_exposed} stored bits of {result.shards} shard(s) on node {node_id} (seed {result.seed})"
    )


def _store_location(data_dir: Path | None, config_path: Path | None) -> tuple[Path, int | None]:
    """The store directory, and the configured capacity if a config is given (else the recorded one)."""
    from orbitvault.errors import InvalidArgument

    if config_path is not None:
        config = load_node_config(config_path, overrides={"data_dir": data_dir})
        return config.data_dir, config.capacity
    if data_dir is None:
        raise InvalidArgument("give --data-dir DIR (the node's store) or --config node.toml")
    return data_dir, None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM / SIGINT set `stop`: the scrubber saves its position and exits cleanly."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
