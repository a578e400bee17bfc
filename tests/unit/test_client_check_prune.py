from __future__ import annotations

import pytest

from orbitvault.client.check import parse_size, select_subset
from orbitvault.client.prune import _max_unused
from orbitvault.errors import InvalidArgument

IDS = [f"{i:02x}" + "0" * 62 for i in range(0, 256, 3)]


def test_subset_n_of_t_partitions_the_packs() -> None:
    parts = [set(select_subset(IDS, {}, f"{n}/4")) for n in (1, 2, 3, 4)]
    assert set().union(*parts) == set(IDS)
    assert sum(len(p) for p in parts) == len(IDS)
    assert select_subset(IDS, {}, "2/4") == select_subset(IDS, {}, "2/4")  # deterministic


def test_subset_percent_and_size() -> None:
    assert len(select_subset(IDS, {}, "10%")) == round(len(IDS) * 0.1)
    assert len(select_subset(IDS, {}, "100%")) == len(IDS)
    sizes = dict.fromkeys(IDS, 1000)
    assert len(select_subset(IDS, sizes, "5K")) == 5
    assert len(select_subset(IDS, sizes, "1")) == 1  # at least one pack


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x/y", "0%", "150%", "lots"])
def test_bad_subsets(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        select_subset(IDS, {}, bad)


def test_sizes_and_max_unused() -> None:
    assert parse_size("500M") == 500 << 20 and parse_size("2GiB") == 2 << 30 and parse_size("10") == 10
    assert _max_unused("unlimited", 100) == float("inf")
    assert _max_unused("0", 100) == 0
    # 10% of the repository after prune may be unused: unused <= used * 10 / 90
    assert _max_unused("10%", 900) == pytest.approx(100)
    with pytest.raises(InvalidArgument):
        _max_unused("100%", 1)
