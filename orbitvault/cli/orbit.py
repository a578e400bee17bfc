"""`orbitvault orbit ...`: predict passes and contact plans, convert plans, draw timelines.

Adapters only: options are parsed here, the work is in `orbitvault.orbit`. Errors the domain
raises on purpose (`OrbitVaultError`) become one-line CLI errors, never tracebacks.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from orbitvault.cli.errors import cli_errors
from orbitvault.errors import InvalidArgument
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.links import Network
from orbitvault.orbit.model import Constellation
from orbitvault.orbit.passes import Pass, predict_all, predict_passes
from orbitvault.orbit.plan import ContactPlan, read_plan, write_plan
from orbitvault.orbit.rpo import DEFAULT_STRIPE_BYTES, Prediction, predict_backlog, predict_restore
from orbitvault.orbit.scheduler import StripeBulk, plan_uplink
from orbitvault.orbit.timeline import Transfer, render_timeline
from orbitvault.orbit.timeutil import (
    DAY,
    Timestamp,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
    to_datetime,
)
from orbitvault.storage.config import parse_size


def _span(start: str, duration: str) -> tuple[Timestamp, Timestamp]:
    t0 = parse_time(start)
    if start.strip().lower() == "now":
        t0 = math.floor(t0 / 60) * 60  # whole minutes: plans and tables read better
    return t0, t0 + parse_duration(duration)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot write {path}: {e.strerror or e}") from None


def _short(t: Timestamp) -> str:
    """Table time: month-day and time of day, UTC (the year is in the table title)."""
    return to_datetime(round(t)).strftime("%m-%d %H:%M:%S")


def _table(title: str, columns: list[str], right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    return table


def _console() -> Console:
    """Terminal width on a terminal; wide enough for whole rows when piped or captured."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _rate(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit, div in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= div:
            return f"{bits / div:.4g} {unit}"
    return f"{bits:.0f} bit/s"


def _size(n: float) -> str:
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `passes` and `plan`, in the order `--help` lists them."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Constellation TOML (satellites, stations, ISL). Default: the shipped sample.",
        ),
        click.option(
            "--start", default="now", show_default=True, help="Span start: ISO 8601 UTC (2026-11-21T00:00Z) or 'now'."
        ),
        click.option("--duration", default="1d", show_default=True, help="Span length: 3600, 90m, 6h, 1d, 1w."),
        click.option("--step", type=float, default=30.0, show_default=True, help="Coarse scan step, seconds."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
        click.option(
            "--svg", "svg_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a timeline picture."
        ),
    ]
    for option in reversed(options):  # decorators apply bottom-up
        f = option(f)
    return f


@click.group()
def orbit() -> None:
    """Orbit model: ground-station passes, inter-satellite windows, contact plans."""


@orbit.command()
@_common
@click.option("--station", "stations", multiple=True, help="Only this station (repeatable).")
@click.option("--satellite", "satellites", multiple=True, help="Only this satellite (repeatable).")
def passes(
    config_path: Path | None,
    start: str,
    duration: str,
    step: float,
    as_json: bool,
    svg_path: Path | None,
    stations: tuple[str, ...],
    satellites: tuple[str, ...],
) -> None:
    """Predict ground-station passes (AOS/LOS to the second, maximum elevation)."""
    with cli_errors():
        t0, t1 = _span(start, duration)
        con = load_constellation(config_path).select(stations=stations or None, satellites=satellites or None)
        began = time.perf_counter()
        found = predict_passes(con, t0, t1, step=step)
        elapsed = time.perf_counter() - began
        summary = _pass_summary(con, found, t1 - t0)
        if svg_path:
            plan = ContactPlan.from_windows(con, found, epoch=t0)
            title = f"{con.name}: passes"
            _write_text(
                svg_path,
                render_timeline(plan, stations={s.name for s in con.stations}, start=t0, end=t1, title=title),
            )
        if as_json:
            doc = {
                "constellation": con.name,
                "start": format_time(t0),
                "end": format_time(t1),
                "passes": [_pass_dict(p) for p in found],
                "summary": summary,
            }
            click.echo(json.dumps(doc, indent=2))
            return
        console = _console()
        table = _table(
            f"{len(found)} passes, {format_time(t0)} to {format_time(t1)} (times UTC)",
            ["Station", "Satellite", "AOS", "LOS", "Duration", "Max el", "at"],
            right=("Duration", "Max el"),
        )
        for p in found:
            table.add_row(
                p.station,
                p.satellite,
                _short(p.aos),
                _short(p.los)[6:],
                format_duration(p.duration),
                f"{p.max_elevation_deg:.1f}°",
                _short(p.max_elevation_time)[6:],
            )
        console.print(table)
        stable = _table(
            "Per station",
            ["Station", "Mask", "Passes", "Per satellite-day", "Mean", "Longest"],
            right=("Mask", "Passes", "Per satellite-day", "Mean", "Longest"),
        )
        for row in summary:
            stable.add_row(
                row["station"],
                f"{row['elevation_mask_deg']:g}°",
                str(row["passes"]),
                f"{row['passes_per_satellite_day']:.2f}",
                format_duration(row["mean_duration_s"]),
                format_duration(row["max_duration_s"]),
            )
        console.print(stable)
        console.print(f"predicted in {elapsed:.2f} s")


@orbit.command()
@_common
@click.option("--no-isl", is_flag=True, help="Leave inter-satellite links out.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the plan from an ION or HDTN file instead of predicting it.",
)
@click.option("--epoch", help="Epoch for relative times in --input (ION '+s', HDTN) when the file has none.")
@click.option(
    "--ion", "ion_path", type=click.Path(dir_okay=False, path_type=Path), help="Write ION contact plan lines."
)
@click.option("--hdtn", "hdtn_path", type=click.Path(dir_okay=False, path_type=Path), help="Write an HDTN JSON plan.")
@click.option(
    "--backlog",
    help="Predict when this much object data queued now is DURABLE (all k+m shards in orbit), e.g. 10GiB. "
    "With --svg, the planned transfers are drawn in.",
)
@click.option("--restore", "restore_size", help="Predict when a restore of this much object data is down, e.g. 1TiB.")
@click.option(
    "--storage-class",
    "storage_class",
    help="k+m for --backlog/--restore, e.g. 4+2. Default: the gateway's (4+2 below 14 satellites, else 10+4).",
)
@click.option("--shard-size", help="Shard size for --backlog/--restore. Default: a 16 MiB stripe / k.")
def plan(
    config_path: Path | None,
    start: str,
    duration: str,
    step: float,
    as_json: bool,
    svg_path: Path | None,
    no_isl: bool,
    input_path: Path | None,
    epoch: str | None,
    ion_path: Path | None,
    hdtn_path: Path | None,
    backlog: str | None,
    restore_size: str | None,
    storage_class: str | None,
    shard_size: str | None,
) -> None:
    """Contact plan for a span: uplinks, downlinks and ISL windows with rates and light time.

    With --backlog/--restore, also the predicted RPO/RTO next to the lower bound that the windows'
    total capacity gives (no schedule can beat it).
    """
    with cli_errors():
        stations: set[str] = set()
        elapsed = 0.0
        if input_path is not None:
            con = load_constellation(config_path) if config_path else None
            nodes = con.nodes() if con else None
            cp = read_plan(input_path, epoch=parse_time(epoch) if epoch else None, nodes=nodes)
            if con:
                stations = {s.name for s in con.stations}
            t0 = min((c.start for c in cp.contacts), default=cp.epoch or 0.0)
            t1 = max((c.end for c in cp.contacts), default=t0 + DAY)
            name = input_path.name
        else:
            t0, t1 = _span(start, duration)
            con = load_constellation(config_path)
            stations = {s.name for s in con.stations}
            began = time.perf_counter()
            found, windows = predict_all(con, t0, t1, step=step, isl=not no_isl)
            cp = ContactPlan.from_windows(con, found, windows, epoch=t0)
            elapsed = time.perf_counter() - began
            name = con.name
        if ion_path:
            write_plan(cp, ion_path, "ion")
        if hdtn_path:
            write_plan(cp, hdtn_path, "hdtn")
        predictions: list[tuple[str, int, Prediction]] = []
        drawn: list[Transfer] = []
        if backlog or restore_size:
            net_con = con if con is not None else load_constellation(config_path)
            net = Network.from_constellation(net_con)
            k, m = _storage_class(storage_class, len(net_con.satellites))
            shard = parse_size(shard_size, "--shard-size") if shard_size else None
            if backlog:
                size = parse_size(backlog, "--backlog")
                predictions.append(
                    ("backlog", size, predict_backlog(cp, net, size, k=k, m=m, now=t0, shard_size=shard))
                )
                if svg_path:
                    per = shard or -(-DEFAULT_STRIPE_BYTES // k)
                    stripes = -(-size // (k * per))
                    sched = plan_uplink(cp, net, bulk=[StripeBulk("backlog", stripes, k, m, per)], now=t0)
                    drawn = sched.for_timeline()
            if restore_size:
                size = parse_size(restore_size, "--restore")
                predictions.append(
                    ("restore", size, predict_restore(cp, net, size, k=k, m=m, now=t0, shard_size=shard))
                )
        else:
            k = m = 0
        if svg_path:
            title = f"{name}: contact plan" + (f", backlog {backlog} ({k}+{m})" if drawn else "")
            svg = render_timeline(cp, stations=stations, transfers=drawn, start=t0, end=t1, title=title)
            _write_text(svg_path, svg)
        if as_json:
            doc = cp.to_dict()
            if predictions:
                doc["predictions"] = [_prediction_dict(kind, size, k, m, p) for kind, size, p in predictions]
            click.echo(json.dumps(doc, indent=2))
            return
        console = _console()
        table = _table(
            f"{len(cp.contacts)} contacts, {format_time(t0)} to {format_time(t1)} (times UTC)",
            ["From", "To", "Start", "End", "Duration", "Rate", "Capacity", "OWLT"],
            right=("Duration", "Rate", "Capacity", "OWLT"),
        )
        for c in cp.contacts:
            table.add_row(
                c.source,
                c.dest,
                _short(c.start),
                _short(c.end)[6:],
                format_duration(c.duration),
                _rate(c.rate),
                _size(c.capacity),
                f"{c.owlt:g} s",
            )
        console.print(table)
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for c in cp.contacts:
            if not stations:
                kind = "all"  # a plan file alone does not say which nodes are on the ground
            else:
                kind = "uplink" if c.source in stations else "downlink" if c.dest in stations else "ISL"
            totals[kind][0] += 1
            totals[kind][1] += c.capacity
        for kind, (count, capacity) in sorted(totals.items()):
            console.print(f"{kind}: {int(count)} contacts, {_size(capacity)} capacity")
        if input_path is None:
            console.print(f"planned in {elapsed:.2f} s")
        if predictions:
            console.print(_prediction_table(predictions, k, m, t1))


def _storage_class(text: str | None, satellites: int) -> tuple[int, int]:
    if not text:
        return (10, 4) if satellites >= 14 else (4, 2)  # the gateway's default storage class
    try:
        k, m = (int(x) for x in text.split("+"))
    except ValueError:
        raise InvalidArgument(f"--storage-class {text!r}: write it as k+m, e.g. 4+2") from None
    if k < 1 or m < 0:
        raise InvalidArgument(f"--storage-class {text!r}: k must be >= 1 and m >= 0")
    return k, m


def _when(t: Timestamp | None, now: Timestamp) -> str:
    return "-" if t is None else f"{format_time(t)} (+{format_duration(t - now)})"


def _prediction_table(predictions: list[tuple[str, int, Prediction]], k: int, m: int, end: Timestamp) -> Table:
    table = _table(
        f"RPO/RTO from {format_time(predictions[0][2].now)} ({k}+{m}; bound: the windows' capacity alone)",
        ["Prediction", "Objects", "Over the links", "Predicted", "Capacity bound", "Ratio"],
        right=("Objects", "Over the links", "Ratio"),
    )
    for kind, size, p in predictions:
        what = "backlog DURABLE" if kind == "backlog" else "restore complete"
        done = _when(p.done_at, p.now) if p.done_at is not None else f"not by {format_time(end)}: longer --duration"
        ratio = "-" if p.ratio is None else f"{p.ratio:.3f}"
        table.add_row(what, _size(size), _size(p.nbytes), done, _when(p.bound_at, p.now), ratio)
    return table


def _prediction_dict(kind: str, size: int, k: int, m: int, p: Prediction) -> dict[str, Any]:
    def iso(t: Timestamp | None) -> str | None:
        return None if t is None else format_time(t)

    return {
        "kind": kind,
        "object_bytes": size,
        "storage_class": f"{k}+{m}",
        "stripes": p.stripes,
        "link_bytes": p.nbytes,
        "from": format_time(p.now),
        "done": iso(p.done_at),
        "done_unix": p.done_at,
        "capacity_bound": iso(p.bound_at),
        "capacity_bound_unix": p.bound_at,
        "ratio": p.ratio,
        "planning_seconds": round(p.planning_seconds, 4),
    }


def _pass_dict(p: Pass) -> dict[str, Any]:
    return {
        "station": p.station,
        "satellite": p.satellite,
        "aos": format_time(p.aos),
        "los": format_time(p.los),
        "aos_unix": round(p.aos, 3),
        "los_unix": round(p.los, 3),
        "duration_s": round(p.duration, 1),
        "max_elevation_deg": round(p.max_elevation_deg, 2),
        "max_elevation_time": format_time(p.max_elevation_time),
        "max_range_km": round(p.max_range_km, 1),
    }


def _pass_summary(con: Constellation, found: list[Pass], span: float) -> list[dict[str, Any]]:
    out = []
    for st in con.stations:
        mine = [p for p in found if p.station == st.name]
        durations = [p.duration for p in mine]
        sat_days = len(con.satellites) * span / DAY
        out.append(
            {
                "station": st.name,
                "elevation_mask_deg": st.elevation_mask_deg,
                "passes": len(mine),
                "passes_per_satellite_day": len(mine) / sat_days if sat_days else 0.0,
                "mean_duration_s": sum(durations) / len(durations) if durations else 0.0,
                "max_duration_s": max(durations, default=0.0),
            }
        )
    return out
