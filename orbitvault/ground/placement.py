"""Where the shards of a stripe go (design note §6).

Distinct nodes per stripe, spread over orbital planes (failure domains) first: planes are taken
round-robin, the plane holding the fewest of the stripe's shards first and, among equals, the one
with the most free space; within a plane a node is drawn with probability proportional to its free
space, so full nodes fill last. Nodes that are down or lack room for the shard are skipped.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orbitvault.errors import Unavailable


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: bytes
    plane: str
    free_bytes: int


def choose(
    candidates: Iterable[Candidate],
    count: int,
    shard_bytes: int,
    *,
    used_planes: Sequence[str] = (),
    exclude: Iterable[bytes] = (),
    rng: random.Random | None = None,
) -> list[Candidate]:
    """Up to `count` distinct nodes with room for `shard_bytes` each, spread over planes.

    `used_planes` are the planes already holding shards of the stripe (repair places one shard
    next to existing ones); `exclude` the nodes that must not be chosen.
    """
    rng = rng or random.Random()
    banned = set(exclude)
    by_plane: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.node_id in banned or c.free_bytes < shard_bytes:
            continue
        banned.add(c.node_id)
        by_plane.setdefault(c.plane, []).append(c)
    load = Counter(used_planes)
    chosen: list[Candidate] = []
    while len(chosen) < count and by_plane:
        plane = min(by_plane, key=lambda p: (load[p], -sum(c.free_bytes for c in by_plane[p]), p))
        pool = by_plane[plane]
        pick = rng.choices(range(len(pool)), weights=[max(c.free_bytes, 1) for c in pool])[0]
        chosen.append(pool.pop(pick))
        load[plane] += 1
        if not pool:
            del by_plane[plane]
    return chosen


def place_stripe(
    candidates: Iterable[Candidate], k: int, m: int, shard_bytes: int, *, rng: random.Random | None = None
) -> list[Candidate]:
    """k+m nodes for a new stripe, or as many as there are if at least k+1 (the rest go to repair)."""
    chosen = choose(candidates, k + m, shard_bytes, rng=rng)
    if len(chosen) < k + 1:
        raise Unavailable(
            f"only {len(chosen)} storage node(s) are reachable with room for a {k}+{m} stripe; "
            f"at least {k + 1} distinct nodes are needed ({k + m} for full redundancy). "
            "Bring nodes back, add nodes, or retry later."
        )
    return chosen
