"""Fault injection: what it flips is exactly what it reports; it refuses real stores; the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from orbitvault.cli import cli
from orbitvault.errors import FailedPrecondition, InvalidArgument
from orbitvault.storage.irradiate import Irradiation, irradiate, parse_duration, poisson
from orbitvault.storage.scrubber import load_state
from orbitvault.storage.store import CHECKSUMS, HEADER, CrcRecord, RowStatus, ShardStore
from tests.unit.test_scrubber import CAPACITY, Cluster, build_cluster, wreck


@pytest.fixture
def node(tmp_path: Path):
    c = build_cluster(tmp_path, nodes=1, stripes=2)  # one simulation store holding 12 shards
    yield c
    c.close()


def _undo(store: ShardStore, result: Irradiation) -> None:
    for f in result.flips:
        store.flip_bit(f.shard_id, f.where, f.bit)


def test_count_flips_exactly_the_reported_distinct_bits(node: Cluster) -> None:
    store = node.stores[0]
    result = irradiate(store, count=40, seed=5)
    assert result.mode == "count" and result.upsets == 40 and len(result.flips) == 40
    assert len({(f.shard_id, f.target, f.bit) for f in result.flips}) == 40
    assert {f.target for f in result.flips} <= {"header", "checksums", "row", "crcs"}
    # The store really is damaged (read_rows, unlike the scrubber's checks, repairs nothing) ...
    assert any(
        r.status is not RowStatus.OK
        for sid, h in node.headers.items()
        for r in store.read_rows(sid, range(h.row_count))
    )
    # ... and flipping the reported bits back restores every byte: nothing else was touched.
    store2 = node.reopen(0)
    result_again = irradiate(store2, count=40, seed=5, dry_run=True)
    assert result_again.flips == result.flips  # same seed, same choice
    _undo(store2, result)
    node.assert_pristine()


def test_exposure_covers_every_stored_bit(node: Cluster) -> None:
    store = node.stores[0]
    expected = 0
    for sid, h in node.headers.items():
        expected += store.stored_value_len(sid, HEADER) + store.stored_value_len(sid, CHECKSUMS)
        expected += sum(store.stored_value_len(sid, r) for r in range(h.row_count))
        expected += sum(store.stored_value_len(sid, CrcRecord(r)) for r in range(h.row_count))
    assert irradiate(store, count=0, seed=1).bits_exposed == expected * 8


def test_objects_limit_the_exposure_to_their_shards(node: Cluster) -> None:
    store = node.stores[0]
    objects = sorted({h.object_id for h in node.headers.values()})
    assert len(objects) == 2
    mine = {sid for sid, h in node.headers.items() if h.object_id == objects[0]}
    whole = irradiate(store, count=0, seed=1).bits_exposed
    part = irradiate(store, count=30, seed=2, objects=[objects[0]], dry_run=True)
    assert part.shards == len(mine) and 0 < part.bits_exposed < whole
    assert {f.shard_id for f in part.flips} <= mine
    assert irradiate(store, count=0, objects=[bytes(32)]).shards == 0  # an object the node does not hold


def test_refuses_a_store_not_marked_simulation(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "real", capacity_bytes=CAPACITY)
    try:
        with pytest.raises(FailedPrecondition, match="not a simulation store"):
            irradiate(store, count=1)
        assert irradiate(store, count=0, force=True, dry_run=True).flips == []
    finally:
        store.close()


def test_rate_mode_with_saa_burst(node: Cluster) -> None:
    store = node.stores[0]
    day = 86_400.0
    bits = irradiate(store, count=0).bits_exposed
    rate = 1e-6
    accel = 50.0 / (rate * bits)  # about 50 upsets a day outside the anomaly
    result = irradiate(
        store, rate=rate, duration_s=day, acceleration=accel, saa_burst=20.0, saa_fraction=0.05, seed=11, dry_run=True
    )
    assert result.expected_upsets == pytest.approx(50 * 0.95 + 50 * 0.05 * 20)
    assert abs(result.upsets - result.expected_upsets) < 5 * result.expected_upsets**0.5
    start, end = result.params["saa_window_s"]
    assert end - start == pytest.approx(0.05 * day)
    for f in result.flips:
        assert 0 <= f.t_s < day
        assert f.saa == (start <= f.t_s < end)
    in_saa = sum(f.saa for f in result.flips)
    assert in_saa > len(result.flips) / 3  # 5% of the time holds half the expected upsets
    assert [f.t_s for f in result.flips] == sorted(f.t_s for f in result.flips)


def test_multi_bit_upsets_flip_adjacent_bits_of_one_value(node: Cluster) -> None:
    store = node.stores[0]
    result = irradiate(store, count=30, mbu_share=1.0, seed=3, dry_run=True)
    by_upset: dict[int, list] = {}
    for f in result.flips:
        by_upset.setdefault(f.upset, []).append(f)
    assert len(by_upset) == 30 and len(result.flips) > 30
    for flips in by_upset.values():
        if len(flips) == 2:
            a, b = flips
            assert (a.shard_id, a.target) == (b.shard_id, b.target) and abs(a.bit - b.bit) == 1
    assert len({(f.shard_id, f.target, f.bit) for f in result.flips}) == len(result.flips)


def test_argument_errors(node: Cluster) -> None:
    store = node.stores[0]
    with pytest.raises(InvalidArgument):
        irradiate(store)
    with pytest.raises(InvalidArgument):
        irradiate(store, count=1, rate=1e-6, duration_s=1)
    with pytest.raises(InvalidArgument):
        irradiate(store, rate=1e-6)
    with pytest.raises(InvalidArgument, match="only"):
        irradiate(store, count=10**12)
    with pytest.raises(InvalidArgument):
        irradiate(store, rate=1e-6, duration_s=10, saa_burst=0.5)
    assert parse_duration("90m") == 5400 and parse_duration("2d") == 172_800 and parse_duration("15") == 15
    with pytest.raises(InvalidArgument):
        parse_duration("soon")


@pytest.mark.parametrize("lam", [0.5, 4.0, 37.0, 5000.0])
def test_poisson_mean_and_variance(lam: float) -> None:
    rng = random.Random(1)
    draws = [poisson(rng, lam) for _ in range(4000)]
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / len(draws)
    assert abs(mean - lam) < 5 * (lam / len(draws)) ** 0.5
    assert var == pytest.approx(lam, rel=0.15)


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_irradiate_json(node: Cluster) -> None:
    data_dir = node.root / "node0"
    node.stores[0].close()
    out = CliRunner().invoke(
        cli, ["node", "irradiate", "--data-dir", str(data_dir), "--count", "7", "--seed", "4", "--json"]
    )
    node.stores[0] = ShardStore(data_dir, capacity_bytes=CAPACITY, create=False)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["applied"] and doc["bits_flipped"] == 7 and len(doc["flips"]) == 7 and doc["seed"] == 4
    assert doc["node_id"] == node.stores[0].node_id.hex()
    assert {f["shard_id"] for f in doc["flips"]} <= {sid.hex() for sid in node.headers}


def test_cli_irradiate_refuses_real_store_without_traceback(tmp_path: Path) -> None:
    ShardStore(tmp_path / "real", capacity_bytes=CAPACITY).close()
    out = CliRunner().invoke(cli, ["node", "irradiate", "--data-dir", str(tmp_path / "real"), "--count", "1"])
    assert out.exit_code == 1
    assert "not a simulation store" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli, ["node", "irradiate", "--data-dir", str(tmp_path / "none"), "--count", "1"])
    assert out.exit_code == 1 and "no shard store" in out.output
    out = CliRunner().invoke(cli, ["node", "irradiate", "--data-dir", str(tmp_path / "real"), "--rate", "1e-6"])
    assert out.exit_code == 1 and "--duration" in out.output


def test_cli_scrub_once(node: Cluster, tmp_path: Path) -> None:
    data_dir = node.root / "node0"
    sid = next(iter(node.headers))
    node.stores[0].flip_bit(sid, HEADER, 100)
    node.stores[0].close()
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{data_dir}"\ncapacity = {CAPACITY}\n')
    out = CliRunner().invoke(cli, ["node", "scrub", "--config", str(config), "--once", "--json", "--rate", "0"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["completed"] and doc["damaged_found"] == 1 and doc["repaired_in_place"] == 1
    assert doc["shards_verified"] == 12 and doc["unrecoverable"] == []

    # Every sibling is on this node, so a damaged fragment is rebuilt locally, without peers; three
    # of one row (more than m) cannot be: reported, exit code 3.
    store = node.stores[0] = ShardStore(data_dir, capacity_bytes=CAPACITY, create=False)
    stripe = node.headers[sid].stripe_index
    victims = sorted(s for s, h in node.headers.items() if h.stripe_index == stripe)[:3]
    for victim in victims:
        wreck(store, victim, 2, 600)
    assert load_state(store).passes_completed == 1
    store.close()
    out = CliRunner().invoke(cli, ["node", "scrub", "--config", str(config), "--once"])
    assert out.exit_code == 3, out.output
    for victim in victims:
        assert f"UNRECOVERABLE shard {victim.hex()}" in out.stdout
    assert out.stdout.count("rows 2:") == 3
    node.stores[0] = ShardStore(data_dir, capacity_bytes=CAPACITY, create=False)


def test_cli_scrub_missing_store(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{tmp_path / "nothing"}"\ncapacity = "1GiB"\n')
    out = CliRunner().invoke(cli, ["node", "scrub", "--config", str(config), "--once"])
    assert out.exit_code == 1 and "no shard store" in out.output and "Traceback" not in out.output
