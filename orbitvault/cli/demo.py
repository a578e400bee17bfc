"""`orbitvault erasure-demo`: the erasure layer on a real file, end to end, on disk.

(`orbitvault demo` is the disaster-recovery drill on a local constellation, `cli/drill.py`.) A
real file is cut into k+m
shard files (protected header + rows with blake3 each), then two things go wrong, one after the
other, as they do in orbit:

A. m whole shards are lost (satellites gone): the file is decoded from the k survivors and
   verified, then the lost shards are rebuilt from the others.
B. radiation: random bit flips land in rows, row checksums and headers of every shard. A scrub
   finds every damaged fragment and header, repairs headers in place (Reed-Solomon) and rows from
   the same row of k other shards, and the file is verified again.

Exit code 0 only when both verifications pass.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import blake3
import click
from rich.console import Console
from rich.table import Table

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.record import protect, recover
from orbitvault.erasure.stripe import CHECKSUM_LEN, ShardRows, StripeCoder, checksum
from orbitvault.errors import OrbitVaultError, RecordUncorrectable, TooFewFragments


def default_file() -> Path:
    """A real multi-MiB file present wherever Python runs: its shared library, else the interpreter."""
    libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and lib and (Path(libdir) / lib).is_file():
        return Path(libdir) / lib
    return Path(sys.executable).resolve()


@dataclass
class ShardSet:
    """k+m shard files in one directory: `shard-NN.hdr` (protected record) and `shard-NN.rows`.

    A rows file is, stripe after stripe and row after row, the fragment followed by its blake3.
    Every shard has the same row sizes, so (stripe, row) -> file offset is one table for all.
    """

    root: Path
    geometry: Geometry
    object_len: int

    def __post_init__(self) -> None:
        self.coder = StripeCoder(self.geometry)
        self.slots: dict[tuple[int, int], tuple[int, int]] = {}  # (stripe, row) -> (offset, fragment length)
        offset = 0
        for s, span in enumerate(self.geometry.stripe_spans(self.object_len)):
            for r in range(self.geometry.row_count(span.length)):
                flen = self.coder.codec.fragment_len(self.geometry.row_span(r, span.length).length)
                self.slots[(s, r)] = (offset, flen)
                offset += flen + CHECKSUM_LEN

    def path(self, shard: int, kind: str) -> Path:
        return self.root / f"shard-{shard:02d}.{kind}"

    def header(self, shard: int) -> bytes:
        g = self.geometry
        fields = {"k": g.k, "m": g.m, "fragment_size": g.fragment_size, "stripe_size": g.stripe_size}
        return json.dumps({**fields, "object_len": self.object_len, "shard": shard}).encode()

    def write_header(self, shard: int) -> None:
        self.path(shard, "hdr").write_bytes(protect(self.header(shard)))

    def stripe_len(self, stripe: int) -> int:
        return self.geometry.stripe_span(stripe, self.object_len).length

    def read_stripe(self, shard: int, stripe: int) -> ShardRows:
        frags, sums = [], []
        with self.path(shard, "rows").open("rb") as f:
            for r in range(self.geometry.row_count(self.stripe_len(stripe))):
                offset, flen = self.slots[(stripe, r)]
                f.seek(offset)
                blob = f.read(flen + CHECKSUM_LEN)
                frags.append(blob[:flen])
                sums.append(blob[flen:])
        return ShardRows(shard, 0, frags, sums)

    def write_row(self, shard: int, stripe: int, row: int, fragment: bytes) -> None:
        offset, _ = self.slots[(stripe, row)]
        with self.path(shard, "rows").open("r+b") as f:
            f.seek(offset)
            f.write(fragment + checksum(fragment))
            f.flush()
            os.fsync(f.fileno())


def encode_file(src: Path, shards: ShardSet) -> None:
    g = shards.geometry
    outs = [shards.path(i, "rows").open("wb") for i in range(g.n)]
    try:
        with src.open("rb") as f:
            for span in g.stripe_spans(shards.object_len):
                encoded = shards.coder.encode(f.read(span.length))
                for out, shard in zip(outs, encoded.shards, strict=True):
                    for frag, digest in zip(shard.fragments, shard.checksums, strict=True):
                        out.write(frag + digest)
    finally:
        for out in outs:
            out.close()
    for i in range(g.n):
        shards.write_header(i)


def decode_file(shards: ShardSet, use: list[int]) -> tuple[str, list[tuple[int, int, int]]]:
    """blake3 of the decoded object from shards `use`, and the damaged (stripe, row, shard) seen."""
    digest = blake3.blake3()
    damaged: list[tuple[int, int, int]] = []
    for s in range(shards.geometry.stripe_count(shards.object_len)):
        result = shards.coder.decode(shards.stripe_len(s), [shards.read_stripe(i, s) for i in use])
        for chunk in result.chunks:
            digest.update(chunk)
        damaged += [(s, r, i) for r, i in result.damaged]
    return digest.hexdigest(), damaged


def rebuild_shards(shards: ShardSet, lost: list[int]) -> None:
    g = shards.geometry
    survivors = [i for i in range(g.n) if i not in lost]
    outs = {i: shards.path(i, "rows").open("wb") for i in lost}
    try:
        for s in range(g.stripe_count(shards.object_len)):
            rebuilt = shards.coder.rebuild(shards.stripe_len(s), [shards.read_stripe(i, s) for i in survivors], lost)
            for i in lost:
                for r in sorted(rebuilt[i]):
                    outs[i].write(rebuilt[i][r] + checksum(rebuilt[i][r]))
    finally:
        for out in outs.values():
            out.close()
    for i in lost:
        shards.write_header(i)


def irradiate(shards: ShardSet, flips: int, header_flips: int, rng: random.Random) -> dict[str, set]:
    """Flip `flips` random bits over the rows files and `header_flips` in headers; say what was hit.

    Headers are a tiny share of the bytes, so uniform flips would almost never reach one; the
    demo aims some there on purpose to show in-place repair.
    """
    g = shards.geometry
    rows = [(i, "rows") for i in range(g.n)]
    sizes = [shards.path(i, "rows").stat().st_size for i in range(g.n)]
    targets = rng.choices(rows, weights=sizes, k=flips) + [(rng.randrange(g.n), "hdr") for _ in range(header_flips)]
    hit: dict[str, set] = {"rows": set(), "checksums": set(), "headers": set()}
    slots = sorted((off, flen, key) for key, (off, flen) in shards.slots.items())
    starts = [off for off, _, _ in slots]
    for shard, kind in targets:
        pos, bit = rng.randrange(shards.path(shard, kind).stat().st_size), rng.randrange(8)
        with shards.path(shard, kind).open("r+b") as f:
            f.seek(pos)
            byte = f.read(1)[0] ^ (1 << bit)
            f.seek(pos)
            f.write(bytes([byte]))
        if kind == "hdr":
            hit["headers"].add(shard)
            continue
        off, flen, (s, r) = slots[bisect.bisect_right(starts, pos) - 1]
        hit["rows" if pos < off + flen else "checksums"].add((s, r, shard))
    return hit


def scrub(shards: ShardSet) -> dict[str, int | list[tuple[int, int]]]:
    """Verify every header and row; repair headers in place and rows from k other shards.

    Rows with more than m damaged fragments cannot be rebuilt: they are listed as (stripe, row).
    """
    g = shards.geometry
    counts: dict = {"headers_repaired": 0, "header_bytes_corrected": 0, "rows_damaged": 0, "rows_repaired": 0}
    unrecoverable: list[tuple[int, int]] = []
    for i in range(g.n):
        try:
            rec = recover(shards.path(i, "hdr").read_bytes())
        except RecordUncorrectable:
            shards.write_header(i)  # the header is derivable from the shard set; a node would ask a peer
            counts["headers_repaired"] += 1
            continue
        if rec.corrected:
            shards.path(i, "hdr").write_bytes(rec.stored)
            counts["headers_repaired"] += 1
            counts["header_bytes_corrected"] += rec.corrected
    for s in range(g.stripe_count(shards.object_len)):
        rows = [shards.read_stripe(i, s) for i in range(g.n)]
        for r in range(g.row_count(shards.stripe_len(s))):
            bad = [i for i in range(g.n) if checksum(rows[i].fragments[r]) != rows[i].checksums[r]]
            if not bad:
                continue
            counts["rows_damaged"] += len(bad)
            try:
                rebuilt = shards.coder.rebuild(shards.stripe_len(s), rows, bad, [r])
            except TooFewFragments:
                unrecoverable.append((s, r))
                continue
            for i in bad:
                shards.write_row(i, s, r, rebuilt[i][r])
                counts["rows_repaired"] += 1
    counts["unrecoverable"] = unrecoverable
    return counts


@click.command("erasure-demo")
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "k", default=10, show_default=True, help="Data fragments per row.")
@click.option("-m", "m", default=4, show_default=True, help="Parity fragments per row.")
@click.option("--flips", default=24, show_default=True, help="Bits flipped in rows over the radiation phase.")
@click.option("--rounds", default=3, show_default=True, help="Orbits of radiation, each followed by a scrub.")
@click.option("--header-flips", default=3, show_default=True, help="Extra bit flips aimed at shard headers.")
@click.option("--seed", default=2026, show_default=True, help="Seed for the random failures.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep shard files here.")
def erasure_demo(
    path: Path | None, k: int, m: int, flips: int, rounds: int, header_flips: int, seed: int, workdir: Path | None
) -> None:
    """Erasure-code a real file, lose m shards, irradiate the rest, repair, verify.

    PATH defaults to the Python shared library (a real multi-MiB binary).
    """
    console = Console()
    src = path or default_file()
    rng = random.Random(seed)
    tmp = None if workdir else Path(tempfile.mkdtemp(prefix="orbitvault-demo-"))
    root = workdir or tmp
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    try:
        if rounds < 1 or flips < 0 or header_flips < 0:
            raise click.BadParameter("--rounds must be >= 1 and flip counts >= 0")
        ok = run(console, src, Geometry(k, m), flips, rounds, header_flips, rng, root)
    except OrbitVaultError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


def run(
    console: Console,
    src: Path,
    geometry: Geometry,
    flips: int,
    rounds: int,
    header_flips: int,
    rng: random.Random,
    root: Path,
) -> bool:
    size = src.stat().st_size
    original = blake3.blake3().update_mmap(src).hexdigest() if size else blake3.blake3().hexdigest()
    shards = ShardSet(root, geometry, size)
    g = geometry
    console.rule(f"[bold]orbitvault erasure demo[/] — {src} ({size / 1e6:.1f} MB)")

    t0 = time.perf_counter()
    encode_file(src, shards)
    t_enc = time.perf_counter() - t0
    stored = sum(shards.path(i, kind).stat().st_size for i in range(g.n) for kind in ("hdr", "rows"))
    console.print(
        f"[green]encoded[/] {g.stripe_count(size)} stripe(s) of {g} into {g.n} shard files in {root}: "
        f"{stored / 1e6:.1f} MB stored ({stored / max(size, 1):.3f}x), {size / t_enc / 1e6:.0f} MB/s"
    )

    lost = sorted(rng.sample(range(g.n), g.m))
    for i in lost:
        shards.path(i, "rows").unlink()
        shards.path(i, "hdr").unlink()
    console.print(f"[red]phase A[/] lost shards {lost} for good (m={g.m} satellites gone)")
    t0 = time.perf_counter()
    digest_a, _ = decode_file(shards, [i for i in range(g.n) if i not in lost])
    t_dec = time.perf_counter() - t0
    ok_a = digest_a == original
    console.print(
        f"  decoded from the {g.k} survivors at {size / t_dec / 1e6:.0f} MB/s: "
        + ("[green]blake3 matches the original[/]" if ok_a else "[red]MISMATCH[/]")
    )
    rebuild_shards(shards, lost)
    console.print(f"  rebuilt shards {lost} from the others")

    totals = {"flips": 0, "hit": 0, "headers_hit": 0, "found": 0, "repaired": 0, "headers_repaired": 0}
    counts: dict = {"unrecoverable": []}
    for orbit in range(1, rounds + 1):
        dose, header_dose = flips // rounds, header_flips // rounds
        if orbit == rounds:  # the last orbit takes the remainders
            dose, header_dose = flips - totals["flips"], header_flips - totals["headers_hit"]
        hit = irradiate(shards, dose, header_dose, rng)
        counts = scrub(shards)
        hit_rows = len(hit["rows"] | hit["checksums"])
        console.print(
            f"[red]orbit {orbit}[/] radiation: {dose + header_dose} bit flips hit {len(hit['rows'])} fragment(s), "
            f"{len(hit['checksums'])} row checksum(s), {len(hit['headers'])} header(s); "
            f"scrub found {counts['rows_damaged']} damaged fragment(s), rebuilt {counts['rows_repaired']} "
            f"from peers, repaired {counts['headers_repaired']} header(s) in place "
            f"({counts['header_bytes_corrected']} bytes)"
        )
        totals["flips"] += dose
        totals["headers_hit"] += header_dose
        totals["hit"] += hit_rows
        totals["found"] += counts["rows_damaged"]
        totals["repaired"] += counts["rows_repaired"]
        totals["headers_repaired"] += counts["headers_repaired"]
        totals["headers_expected"] = totals.get("headers_expected", 0) + len(hit["headers"])
        if counts["unrecoverable"]:
            break
    if counts["unrecoverable"]:
        console.print(
            f"  [red]unrecoverable[/] (more than m={g.m} damaged fragments), as (stripe, row): "
            f"{counts['unrecoverable']}; bytes lost: "
            + ", ".join(
                f"{g.stripe_span(s, size).offset + g.row_span(r, shards.stripe_len(s)).offset}"
                f"+{g.row_span(r, shards.stripe_len(s)).length}"
                for s, r in counts["unrecoverable"]
            )
        )
        ok_b = False
    else:
        digest_b, damaged_after = decode_file(shards, list(range(g.n)))
        ok_b = digest_b == original and not damaged_after and scrub(shards)["rows_damaged"] == 0

    table = Table(title="result")
    table.add_column("check")
    table.add_column("outcome")
    table.add_row("decode with m shards lost", "ok" if ok_a else "FAILED")
    table.add_row("damaged fragments found / hit", f"{totals['found']} / {totals['hit']}")
    table.add_row("fragments rebuilt from peers", str(totals["repaired"]))
    table.add_row("headers repaired / hit", f"{totals['headers_repaired']} / {totals['headers_expected']}")
    table.add_row("decode after scrub", "ok" if ok_b else "FAILED")
    console.print(table)
    found_all = totals["found"] == totals["hit"] and totals["headers_repaired"] == totals["headers_expected"]
    verdict = ok_a and ok_b and found_all
    console.print("[bold green]verified: byte-identical[/]" if verdict else "[bold red]verification failed[/]")
    return verdict
