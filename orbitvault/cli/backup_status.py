"""`orbitvault status SNAPSHOT`: how much of a snapshot is durable in orbit.

A snapshot needs its snapshot object, the repository's config, keys and index, and every pack that
holds one of its tree or data blobs. Each is an object in the gateway; its durability (queued on
the ground, partially uplinked, durable with all k+m shards in orbit, or lost) comes from
GetObjectStatus. The snapshot is as durable as its least durable object.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from orbitvault.cli.backup_common import Ctx, fmt_bytes, repo_command
from orbitvault.errors import InvalidArgument

STATES = ("durable", "partial", "queued", "lost", "unspecified")


def snapshot_objects(repo: Any, snap: Any) -> dict[str, int]:
    """Every object (name -> stored size) a restore of `snap` reads."""
    from orbitvault.client.backend import CONFIG, object_name

    listed = {o.name: o.size for kind in ("keys", "index", "snapshots", "data") for o in repo.backend.list(kind)}
    snapshot = object_name("snapshots", snap.id)
    names = {CONFIG: repo.backend.stat(CONFIG).size, snapshot: listed.get(snapshot, 0)}
    names.update((n, size) for n, size in listed.items() if n.startswith(("keys/", "index/")))
    packs: set[bytes] = set()
    stack, seen = [snap.tree], set()
    while stack:
        tree = stack.pop()
        if tree in seen:
            continue
        seen.add(tree)
        blobs = [tree]
        for node in repo.load_tree(tree):
            if node.subtree is not None:
                stack.append(node.subtree)
            blobs.extend(node.content or ())
        for blob in blobs:
            loc = repo.index.lookup(blob)
            if loc is not None:
                packs.add(loc[0])
    for pack in packs:
        name = object_name("data", pack.hex())
        names[name] = listed.get(name, 0)
    return names


@click.command()
@repo_command
@click.argument("snapshot_id", default="latest")
def status(ctx: Ctx, snapshot_id: str) -> None:
    """How much of a snapshot is durable in orbit (orbit:// repositories)."""
    from orbitvault.client.backend_orbit import OrbitBackend
    from orbitvault.client.snapshot import find_snapshot

    repo = ctx.open_repo(load_index=True)
    if not isinstance(repo.backend, OrbitBackend):
        raise InvalidArgument("status reports durability in orbit: it needs an orbit:// repository")
    snap = find_snapshot(repo.load_snapshots(), snapshot_id)
    objects = snapshot_objects(repo, snap)
    counts = dict.fromkeys(STATES, 0)
    sizes = dict.fromkeys(STATES, 0)
    predicted = 0
    for name in objects:
        st = repo.backend.durability(name)
        state = st.state.value if st.state.value in counts else "unspecified"
        counts[state] += 1
        sizes[state] += objects[name]
        if state != "durable":
            predicted = max(predicted, st.predicted_durable_unix_ms)
    total = len(objects)
    overall = next((s for s in ("lost", "queued", "partial") if counts[s]), "durable")
    out = {
        "snapshot": snap.id,
        "state": overall,
        "objects": total,
        "objects_by_state": {k: v for k, v in counts.items() if v},
        "bytes_by_state": {k: v for k, v in sizes.items() if v},
        "predicted_durable_unix_ms": predicted if overall != "durable" else 0,
    }
    if ctx.json:
        ctx.emit(out)
        return
    ctx.print(f"snapshot {snap.id[:8]}: {overall}")
    for s in STATES:
        if counts[s]:
            ctx.print(f"  {s:>9}: {counts[s]:>6} object(s), {fmt_bytes(sizes[s])}")
    if out["predicted_durable_unix_ms"]:
        when = datetime.fromtimestamp(predicted / 1000, UTC).isoformat(timespec="seconds")
        ctx.print(f"  all durable in orbit by {when} (predicted)")
