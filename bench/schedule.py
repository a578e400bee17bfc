"""Planning time of the uplink scheduler, and achieved RPO against the capacity lower bound.

Walker-delta constellations (53 deg, 550 km) of 10 satellites in 2 planes and 100 in 10 planes,
the sample's three ground stations, contact plans for a day and a week (ISL included). Queues:
10^4 shards given one by one (exact per-shard output) and 10^6 shards in bulk (aggregate). The
storage class is the gateway's default for the size (4+2 below 14 nodes, else 10+4) with 16 MiB
stripes. For each case: planning time, and (predicted DURABLE - now) / (capacity bound - now),
the bound being when the served uplink windows could have carried all k+m shards at all.
The placement bound (earliest any stripe could be DURABLE: k+m distinct satellites reached, one
ISL hop allowed) is what limits a small queue; RPO/max compares with the larger of the two bounds.
A last row per constellation/span predicts a backlog of half the span's uplink capacity
(`predict_backlog`) and a restore of the same size (`predict_restore`, RTO vs downlink capacity).

Contact plans are cached in bench/out/plans (predicting 100 satellites for a week takes a while).

Usage: python bench/schedule.py [--big] [--exact-million] [--json]
  default: 10 satellites x {day, week}, 100 satellites x day; 10^4 and 10^6 shards
  --big:   also 100 satellites x week
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine

from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.links import Network, ground_contacts, served_segments
from orbitvault.orbit.model import Constellation, Satellite
from orbitvault.orbit.plan import ContactPlan, read_plan, write_plan
from orbitvault.orbit.rpo import DEFAULT_STRIPE_BYTES, predict_backlog, predict_restore
from orbitvault.orbit.scheduler import StripeBulk, StripeSpec, UplinkItem, plan_uplink
from orbitvault.orbit.timeutil import DAY
from orbitvault.orbit.tle import format_tle
from orbitvault.orbit.walker import SAMPLE_EPOCH, walker_delta

CACHE = Path(__file__).with_name("out") / "plans"
T0 = SAMPLE_EPOCH + 20 * DAY


def constellation(total: int, planes: int) -> Constellation:
    stations = load_constellation().stations
    sats = []
    for plane, el in walker_delta(
        total, planes, 1, altitude_km=550.0, inclination_deg=53.0, epoch=SAMPLE_EPOCH, catalog_base=90000
    ):
        line1, line2 = format_tle(el)
        sats.append(Satellite(el.name, el.catalog, line1, line2, plane))
    return Constellation(tuple(sats), stations, name=f"walker-{total}x{planes}")


def contact_plan(con: Constellation, days: int) -> tuple[ContactPlan, float]:
    """The plan for [T0, T0 + days), from the cache if there; seconds spent predicting it."""
    path = CACHE / f"{con.name}-{days}d.rc"
    if path.exists():
        return read_plan(path, nodes=con.nodes()), 0.0
    began = time.perf_counter()
    plan = ContactPlan.from_model(con, T0, T0 + days * DAY, step=60.0)
    elapsed = time.perf_counter() - began
    CACHE.mkdir(parents=True, exist_ok=True)
    write_plan(plan, path, "ion")
    return plan, elapsed


def exact_queue(shards: int, k: int, m: int, size: int) -> tuple[list[UplinkItem], list[StripeSpec]]:
    stripes = shards // (k + m)
    items = [UplinkItem((s, i), s, size, cls=f"tenant{s % 3}") for s in range(stripes) for i in range(k + m)]
    return items, [StripeSpec(s, k, m) for s in range(stripes)]


def run_case(con: Constellation, plan: ContactPlan, shards: int, exact: bool) -> dict[str, object]:
    net = Network.from_constellation(con)
    k, m = (10, 4) if len(con.satellites) >= 14 else (4, 2)
    size = -(-DEFAULT_STRIPE_BYTES // k)
    if exact:
        items, specs = exact_queue(shards, k, m, size)
        sched = plan_uplink(plan, net, items, specs, now=T0)
        total = sum(it.size for it in items)
    else:
        stripes = shards // (k + m)
        sched = plan_uplink(plan, net, bulk=[StripeBulk("q", stripes, k, m, size)], now=T0)
        total = stripes * (k + m) * size
    bound = sched.capacity_bound(total)
    place = sched.placement_bound(k, m)
    done = sched.durable_at
    both = None if bound is None else max(bound, place or T0)
    return {
        "shards": shards,
        "mode": "exact" if exact else "bulk",
        "plan_s": round(sched.planning_seconds, 3),
        "transfers": len(sched.transfers),
        "bytes": total,
        "durable_h": None if done is None else round((done - T0) / 3600, 3),
        "bound_h": None if bound is None else round((bound - T0) / 3600, 3),
        "ratio": None if done is None or bound is None else round((done - T0) / (bound - T0), 3),
        "placement_h": None if place is None else round((place - T0) / 3600, 3),
        "ratio_both": None if done is None or both is None else round((done - T0) / (both - T0), 3),
    }


def half_capacity(con: Constellation, plan: ContactPlan, days: int) -> dict[str, object]:
    net = Network.from_constellation(con)
    k, m = (10, 4) if len(con.satellites) >= 14 else (4, 2)
    segs = served_segments(ground_contacts(plan, net, "uplink", T0, T0 + days * DAY), net, T0, T0 + days * DAY)
    backlog = int(sum(g.capacity for g in segs) / 2 * k / (k + m))
    p = predict_backlog(plan, net, backlog, k=k, m=m, now=T0)
    r = predict_restore(plan, net, backlog, k=k, m=m, now=T0)
    return {
        "restore_plan_s": round(r.planning_seconds, 3),
        "restore_h": None if r.done_at is None else round((r.done_at - T0) / 3600, 2),
        "restore_bound_h": None if r.bound_at is None else round((r.bound_at - T0) / 3600, 2),
        "restore_ratio": None if r.ratio is None else round(r.ratio, 3),
        "backlog_tb": round(backlog / 1e12, 2),
        "plan_s": round(p.planning_seconds, 3),
        "durable_h": None if p.done_at is None else round((p.done_at - T0) / 3600, 2),
        "bound_h": None if p.bound_at is None else round((p.bound_at - T0) / 3600, 2),
        "ratio": None if p.ratio is None else round(p.ratio, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also 100 satellites over a week")
    ap.add_argument("--exact-million", action="store_true", help="also 10^6 shards given one by one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    setups = [(10, 2, 1), (10, 2, 7), (100, 10, 1)]
    if args.big:
        setups.append((100, 10, 7))
    rows = []
    for total, planes, days in setups:
        con = constellation(total, planes)
        plan, predicted = contact_plan(con, days)
        net = Network.from_constellation(con)
        kinds: dict[str, int] = {}
        for c in plan.contacts:
            kind = net.kind(c) or "other"
            kinds[kind] = kinds.get(kind, 0) + 1
        cases = [(10**4, True), (10**6, False)]
        if args.exact_million:
            cases.append((10**6, True))
        for shards, exact in cases:
            row = {"sats": total, "days": days, "windows": kinds, "predict_s": round(predicted, 1)}
            row.update(run_case(con, plan, shards, exact))
            rows.append(row)
        rows.append({"sats": total, "days": days, "half_capacity": half_capacity(con, plan, days)})
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return
    print(f"# bench/schedule.py on {machine()}")
    print(
        f"{'sats':>4} {'span':>4} {'uplinks':>7} {'ISL':>7} {'shards':>8} {'mode':>5} {'plan s':>7} "
        f"{'DURABLE h':>9} {'cap. bound h':>12} {'RPO/cap':>7} {'placement h':>11} {'RPO/max':>7}"
    )
    for r in rows:
        if "half_capacity" in r:
            h = r["half_capacity"]
            assert isinstance(h, dict)
            print(
                f"{r['sats']:>4} {r['days']:>3}d   backlog of half the uplink capacity ({h['backlog_tb']} TB): "
                f"plan {h['plan_s']} s, DURABLE {h['durable_h']} h, bound {h['bound_h']} h, ratio {h['ratio']}"
            )
            print(
                f"{'':>10} restore of the same size: plan {h['restore_plan_s']} s, done {h['restore_h']} h, "
                f"bound {h['restore_bound_h']} h, ratio {h['restore_ratio']}"
            )
            continue
        w = r["windows"]
        assert isinstance(w, dict)
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        both = "-" if r["ratio_both"] is None else f"{r['ratio_both']:.3f}"
        print(
            f"{r['sats']:>4} {r['days']:>3}d {w.get('uplink', 0):>7} {w.get('isl', 0):>7} {r['shards']:>8} "
            f"{r['mode']:>5} {r['plan_s']:>7.3f} {r['durable_h']!s:>9} {r['bound_h']!s:>12} {ratio:>7} "
            f"{r['placement_h']!s:>11} {both:>7}"
        )


if __name__ == "__main__":
    main()
