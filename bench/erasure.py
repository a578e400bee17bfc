"""Erasure layer throughput vs raw pyeclib `isa_l_rs_cauchy`, same data, same run.

For each geometry, on one 16 MiB stripe of random data:
  encode             layer: rows -> fragments + blake3 per fragment-row
  decode, m missing  layer: data fragments 0..m-1 absent, every used fragment checksum-verified
  rebuild 1          layer: fragment 0 of every row rebuilt from k others (what repair calls)
and two raw references without checksums: pyeclib on the whole stripe in one call (how the design's
building-block figures were taken), and pyeclib row by row (the same codec calls the layer makes,
so the gap to it is the cost of checksumming every fragment-row and of the layer's bookkeeping).

Usage: python bench/erasure.py [--size-mib 16] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable

from common import machine

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import StripeCoder

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from pyeclib.ec_iface import ECDriver


def best_mbps(fn: Callable[[], object], nbytes: int, repeat: int) -> float:
    fn()  # warm-up: first calls pay for allocator growth and page faults
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e6


def bench_geometry(k: int, m: int, size: int, repeat: int) -> dict[str, float]:
    probe = Geometry(k, m)
    rows = -(-size // probe.row_size)
    geometry = Geometry(k, m, stripe_size=rows * probe.row_size)
    coder = StripeCoder(geometry)
    data = os.urandom(size)
    driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
    row = geometry.row_size
    row_data = [data[o : o + row] for o in range(0, size, row)]

    enc = coder.encode(data)
    raw_whole = driver.encode(data)
    raw_rows = [driver.encode(r) for r in row_data]
    survivors = enc.shards[m:]
    others = enc.shards[1:]

    results = {
        "encode": best_mbps(lambda: coder.encode(data), size, repeat),
        "encode_raw_whole": best_mbps(lambda: driver.encode(data), size, repeat),
        "encode_raw_rows": best_mbps(lambda: [driver.encode(r) for r in row_data], size, repeat),
        "decode": best_mbps(lambda: coder.decode(size, survivors), size, repeat),
        "decode_raw_whole": best_mbps(lambda: driver.decode(raw_whole[m:]), size, repeat),
        "decode_raw_rows": best_mbps(lambda: [driver.decode(f[m:]) for f in raw_rows], size, repeat),
        "rebuild": best_mbps(lambda: coder.rebuild(size, others, [0]), size, repeat),
        "rebuild_raw_whole": best_mbps(lambda: driver.reconstruct(raw_whole[1 : k + 1], [0]), size, repeat),
        "rebuild_raw_rows": best_mbps(lambda: [driver.reconstruct(f[1 : k + 1], [0]) for f in raw_rows], size, repeat),
    }
    assert coder.decode(size, survivors).data == data
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    report = {"machine": machine(), "stripe_bytes": size, "geometries": {}}
    for k, m in [(4, 2), (8, 4), (10, 4)]:
        report["geometries"][f"{k}+{m}"] = bench_geometry(k, m, size, args.repeat)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# {report['machine']}; {args.size_mib} MiB stripes, best of {args.repeat}; MB/s of stripe data")
    print(f"{'geometry':9} {'operation':18} {'layer':>7} {'raw whole':>10} {'raw rows':>9} {'/whole':>7} {'/rows':>6}")
    for name, r in report["geometries"].items():
        for op, label in [("encode", "encode"), ("decode", "decode, m missing"), ("rebuild", "rebuild 1 frag")]:
            whole, rows = r[f"{op}_raw_whole"], r[f"{op}_raw_rows"]
            print(
                f"{name:9} {label:18} {r[op]:7.0f} {whole:10.0f} {rows:9.0f} {r[op] / whole:7.2f} {r[op] / rows:6.2f}"
            )


if __name__ == "__main__":
    main()
