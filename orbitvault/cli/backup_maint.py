"""Maintenance and inspection commands: forget, prune, diff, find, stats, key, tag, unlock, cat."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import click

from orbitvault.cli.backup import _filtered, _one_snapshot, _snapshot_filter_options, _walk, node_json, snapshot_json
from orbitvault.cli.backup_common import (
    Ctx,
    fmt_bytes,
    fmt_time,
    live_progress,
    prompt_password,
    repo_command,
    table,
)
from orbitvault.errors import InvalidArgument

# --- forget ---------------------------------------------------------------------------------------


def _prune_options(fn: Any) -> Any:
    fn = click.option(
        "--max-unused", default="5%", show_default=True, help='Unused data to tolerate: "5%", a size, or "unlimited".'
    )(fn)
    return fn


@click.command()
@repo_command
@_snapshot_filter_options
@_prune_options
@click.argument("snapshot_ids", nargs=-1)
@click.option("-l", "--keep-last", default=None, help="Keep the last n snapshots ('unlimited' for all).")
@click.option("--keep-hourly", default=None, help="Keep the last n hourly snapshots.")
@click.option("-d", "--keep-daily", default=None, help="Keep the last n daily snapshots.")
@click.option("-w", "--keep-weekly", default=None, help="Keep the last n weekly snapshots.")
@click.option("-m", "--keep-monthly", default=None, help="Keep the last n monthly snapshots.")
@click.option("-y", "--keep-yearly", default=None, help="Keep the last n yearly snapshots.")
@click.option("--keep-within", default=None, help="Keep snapshots within this duration (1y2m3d4h) of the newest.")
@click.option("--keep-within-hourly", default=None, help="Keep hourly snapshots within this duration.")
@click.option("--keep-within-daily", default=None, help="Keep daily snapshots within this duration.")
@click.option("--keep-within-weekly", default=None, help="Keep weekly snapshots within this duration.")
@click.option("--keep-within-monthly", default=None, help="Keep monthly snapshots within this duration.")
@click.option("--keep-within-yearly", default=None, help="Keep yearly snapshots within this duration.")
@click.option("--keep-tag", multiple=True, help="Keep snapshots with these tags (a,b = both; repeatable).")
@click.option(
    "-g", "--group-by", default="host,paths", show_default=True, help="Group by host, paths, tags ('' = one group)."
)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", "run_prune", is_flag=True, help="Run prune afterwards if snapshots were removed.")
def forget(
    ctx: Ctx, snapshot_ids: tuple[str, ...], hosts, tags, paths, max_unused, dry_run, run_prune, group_by, **keeps
) -> None:  # type: ignore[no-untyped-def]
    """Remove snapshots, by id or by policy (restic's --keep-* rules, per group)."""
    from orbitvault.client.forget import Duration, ExpirePolicy, apply_policy, parse_count
    from orbitvault.client.snapshot import find_snapshot, group_snapshots, parse_group_by, parse_tag_lists

    def dur(v: str | None) -> Duration:
        return Duration.parse(v) if v else Duration()

    policy = ExpirePolicy(
        last=parse_count(keeps["keep_last"]),
        hourly=parse_count(keeps["keep_hourly"]),
        daily=parse_count(keeps["keep_daily"]),
        weekly=parse_count(keeps["keep_weekly"]),
        monthly=parse_count(keeps["keep_monthly"]),
        yearly=parse_count(keeps["keep_yearly"]),
        within=dur(keeps["keep_within"]),
        within_hourly=dur(keeps["keep_within_hourly"]),
        within_daily=dur(keeps["keep_within_daily"]),
        within_weekly=dur(keeps["keep_within_weekly"]),
        within_monthly=dur(keeps["keep_within_monthly"]),
        within_yearly=dur(keeps["keep_within_yearly"]),
        tags=parse_tag_lists(keeps["keep_tag"]),
    )
    repo = ctx.open_repo()
    removed: list[str] = []
    with ctx.locked(repo):
        snaps = _filtered(repo, hosts, tags, paths)
        if snapshot_ids:
            if not policy.empty():
                raise InvalidArgument("give snapshot ids or a policy, not both")
            for ref in snapshot_ids:
                s = find_snapshot(repo.load_snapshots(), ref)
                if not dry_run:
                    repo.delete_snapshot(s.id)
                removed.append(s.id)
                ctx.print(f"removed snapshot {s.short_id}" if not dry_run else f"would remove snapshot {s.short_id}")
            if ctx.json:
                ctx.emit([{"removed": removed}])
        else:
            if policy.empty():
                if ctx.json:
                    ctx.emit([])
                else:
                    ctx.print("no policy was specified, no snapshots will be removed")
                return
            ctx.print(f"Applying Policy: {policy}")
            out = []
            for key, group in group_snapshots(snaps, parse_group_by(group_by)):
                keep, remove, reasons = apply_policy(group, policy)
                out.append(
                    {
                        "tags": key.get("tags"),
                        "host": key.get("hostname", ""),
                        "paths": key.get("paths"),
                        "keep": [snapshot_json(s) for s in keep],
                        "remove": [snapshot_json(s) for s in remove] or None,
                        "reasons": [{**r.to_json(), "snapshot": snapshot_json(r.snapshot)} for r in reasons],
                    }
                )
                if not ctx.json:
                    desc = ", ".join(f"{k} [{', '.join(v) if isinstance(v, list) else v}]" for k, v in key.items())
                    ctx.print(f"snapshots for ({desc}):" if desc else "snapshots:")
                    why = {r.snapshot.id: ", ".join(r.matches) for r in reasons}
                    rows = [
                        [s.short_id, fmt_time(s.time), s.hostname, ",".join(s.tags), why[s.id], ", ".join(s.paths)]
                        for s in keep
                    ]
                    ctx.print(f"keep {len(keep)} snapshots:")
                    ctx.print(table(["ID", "Time", "Host", "Tags", "Reasons", "Paths"], rows))
                    if remove:
                        ctx.print(f"remove {len(remove)} snapshots:")
                        rows = [
                            [s.short_id, fmt_time(s.time), s.hostname, ",".join(s.tags), ", ".join(s.paths)]
                            for s in remove
                        ]
                        ctx.print(table(["ID", "Time", "Host", "Tags", "Paths"], rows))
                    ctx.print()
                for s in remove:
                    if not dry_run:
                        repo.delete_snapshot(s.id)
                    removed.append(s.id)
            if ctx.json:
                ctx.emit(out)
            elif removed:
                ctx.print(f"{'would remove' if dry_run else 'removed'} {len(removed)} snapshots")
    if run_prune and removed and not dry_run:
        _run_prune(ctx, repo, max_unused=max_unused, dry_run=False)


# --- prune ----------------------------------------------------------------------------------------


def _run_prune(ctx: Ctx, repo: Any, *, max_unused: str, dry_run: bool) -> None:
    from orbitvault.client.prune import execute_prune, plan_prune

    with ctx.locked(repo, exclusive=True) as lock:
        ctx.print("loading indexes and snapshots, finding data that is still in use")
        plan = plan_prune(repo, max_unused=max_unused)
        if ctx.json:
            ctx.emit({**plan.to_json(), "dry_run": dry_run})
        else:
            ctx.print(f"used:         {plan.used_blobs} blobs / {fmt_bytes(plan.used_bytes)}")
            ctx.print(f"unused:       {plan.unused_blobs} blobs / {fmt_bytes(plan.unused_bytes)}")
            ctx.print(f"to repack:    {len(plan.repack)} packs / {fmt_bytes(plan.repack_bytes)}")
            ctx.print(f"to delete:    {len(plan.remove)} packs / {fmt_bytes(plan.remove_bytes)}")
            if plan.unindexed:
                ctx.print(f"unindexed:    {len(plan.unindexed)} packs (left by interrupted runs) will be deleted")
            if plan.missing:
                ctx.warn(f"{len(plan.missing)} indexed packs are missing; their index entries are dropped")
            ctx.print(f"unused size after prune: {fmt_bytes(plan.unused_after)}")
        if dry_run:
            ctx.print("dry run: nothing was changed")
            return
        state = {"done": 0, "total": len(plan.repack)}

        def progress(done: int, total: int) -> None:
            state["done"], state["total"] = done, total

        with live_progress(
            ctx, lambda: (f"repacking {state['done']}/{state['total']}", state["done"], state["total"] or None)
        ):
            execute_prune(repo, plan, lock=lock, progress=progress)
        ctx.print("done")


@click.command()
@repo_command
@_prune_options
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be done.")
def prune(ctx: Ctx, max_unused: str, dry_run: bool) -> None:
    """Remove unreferenced data and repack partly used packs (takes the exclusive lock)."""
    repo = ctx.open_repo()
    _run_prune(ctx, repo, max_unused=max_unused, dry_run=dry_run)


# --- diff -----------------------------------------------------------------------------------------


def _flatten(repo: Any, tree: bytes) -> dict[str, Any]:
    return dict(_walk(repo, tree, ""))


def _meta(n: Any) -> tuple[Any, ...]:
    return (n.mode, n.uid, n.gid, n.mtime_ns, n.xattrs, n.linktarget)


@click.command()
@repo_command
@click.argument("snapshot_a")
@click.argument("snapshot_b")
@click.option("--metadata", is_flag=True, help="Also show entries whose metadata changed (U).")
def diff(ctx: Ctx, snapshot_a: str, snapshot_b: str, metadata: bool) -> None:
    """Show the differences between two snapshots.

    +  added, -  removed, M  content modified, T  type changed, U  metadata changed (--metadata).
    """
    repo = ctx.open_repo(load_index=True)
    a = _one_snapshot(repo, snapshot_a)
    b = _one_snapshot(repo, snapshot_b)
    if not ctx.json:
        ctx.print(f"comparing snapshot {a.short_id} to {b.short_id}:\n")
    fa, fb = _flatten(repo, a.tree), _flatten(repo, b.tree)
    stats = {"files": {"added": 0, "removed": 0, "changed": 0}, "dirs": {"added": 0, "removed": 0}}
    changes = []
    for path in sorted(set(fa) | set(fb)):
        na, nb = fa.get(path), fb.get(path)
        shown = path + ("/" if (nb or na).type == "dir" else "")
        if na is None:
            mod = "+"
            stats["dirs" if nb.type == "dir" else "files"]["added"] += 1
        elif nb is None:
            mod = "-"
            stats["dirs" if na.type == "dir" else "files"]["removed"] += 1
        elif na.type != nb.type:
            mod = "T"
        elif na.type == "file" and na.content != nb.content:
            mod = "M"
            stats["files"]["changed"] += 1
        elif metadata and _meta(na) != _meta(nb):
            mod = "U"
        else:
            continue
        changes.append({"message_type": "change", "path": shown, "modifier": mod})
    if ctx.json:
        for c in changes:
            ctx.emit(c)
        ctx.emit({"message_type": "statistics", "source_snapshot": a.id, "target_snapshot": b.id, **stats})
        return
    for c in changes:
        click.echo(f"{c['modifier']:<5}{c['path']}")
    ctx.print()
    f, d = stats["files"], stats["dirs"]
    ctx.print(f"Files:       {f['added']:5} new, {f['removed']:5} removed, {f['changed']:5} changed")
    ctx.print(f"Dirs:        {d['added']:5} new, {d['removed']:5} removed")


# --- find -----------------------------------------------------------------------------------------


@click.command()
@repo_command
@_snapshot_filter_options
@click.argument("patterns", nargs=-1, required=True)
@click.option("-s", "--snapshot", "snapshot_ids", multiple=True, help="Only in these snapshots.")
@click.option("-i", "--ignore-case", is_flag=True, help="Case-insensitive patterns.")
@click.option("-l", "--long", "long_", is_flag=True, help="Long listing.")
def find(ctx: Ctx, patterns: tuple[str, ...], snapshot_ids, hosts, tags, paths, ignore_case: bool, long_: bool) -> None:  # type: ignore[no-untyped-def]
    """Find files and directories by name (glob) in snapshots."""
    from orbitvault.cli.backup import long_line
    from orbitvault.client.snapshot import find_snapshot

    repo = ctx.open_repo(load_index=True)
    snaps = _filtered(repo, hosts, tags, paths)
    if snapshot_ids:
        snaps = [find_snapshot(snaps, s) for s in snapshot_ids]
    pats = [p.lower() if ignore_case else p for p in patterns]
    out = []
    for s in snaps:
        matches = []
        for path, n in _walk(repo, s.tree, ""):
            name = n.name.lower() if ignore_case else n.name
            if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p) for p in pats):
                matches.append((path, n))
        if not matches:
            continue
        if ctx.json:
            out.append({"matches": [node_json(p, n) for p, n in matches], "hits": len(matches), "snapshot": s.id})
        else:
            click.echo(f"Found matching entries in snapshot {s.short_id} from {fmt_time(s.time)}")
            for p, n in matches:
                click.echo(long_line(p, n) if long_ else p)
            click.echo()
    if ctx.json:
        ctx.emit(out)


# --- stats ----------------------------------------------------------------------------------------


@click.command()
@repo_command
@_snapshot_filter_options
@click.argument("snapshot_ids", nargs=-1)
@click.option(
    "--mode",
    type=click.Choice(["restore-size", "files-by-contents", "raw-data", "blobs-per-file"]),
    default="restore-size",
    show_default=True,
)
def stats(ctx: Ctx, snapshot_ids, hosts, tags, paths, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Repository or snapshot statistics (restic's modes)."""
    from orbitvault.client.snapshot import find_snapshot

    repo = ctx.open_repo(load_index=True)
    snaps = _filtered(repo, hosts, tags, paths)
    if snapshot_ids:
        snaps = [find_snapshot(snaps, s) for s in snapshot_ids]
    total_size = 0
    files = 0
    blobs: set[bytes] = set()
    seen_trees: set[bytes] = set()
    seen_files: set[tuple[Any, ...]] = set()
    per_file_blobs = 0
    for s in snaps:
        stack = [s.tree]
        while stack:
            tid = stack.pop()
            if mode in ("raw-data", "blobs-per-file", "files-by-contents") and tid in seen_trees:
                continue
            seen_trees.add(tid)
            blobs.add(tid)
            for n in repo.load_tree(tid):
                if n.subtree is not None:
                    stack.append(n.subtree)
                if n.type != "file":
                    continue
                if mode == "files-by-contents":
                    key: tuple[Any, ...] = tuple(n.content or [])
                    if key in seen_files:
                        continue
                    seen_files.add(key)
                files += 1
                total_size += n.size
                per_file_blobs += len(n.content or [])
                blobs.update(n.content or [])
    out: dict[str, Any] = {"snapshots_count": len(snaps)}
    if mode in ("restore-size", "files-by-contents"):
        out.update(total_size=total_size, total_file_count=files)
    elif mode == "blobs-per-file":
        out.update(total_file_count=files, total_blob_count=per_file_blobs)
    else:
        stored = raw = 0
        for b in blobs:
            loc = repo.index.lookup(b)
            if loc:
                stored += loc[1].length
                raw += loc[1].raw_length
        out.update(total_size=stored, total_uncompressed_size=raw, total_blob_count=len(blobs))
        if stored:
            out["compression_ratio"] = round(raw / stored, 3)
    if ctx.json:
        ctx.emit(out)
        return
    ctx.print(f"Stats in {mode} mode:")
    ctx.print(f"     Snapshots processed:  {len(snaps)}")
    for k, v in out.items():
        if k == "snapshots_count":
            continue
        label = k.replace("_", " ").capitalize()
        ctx.print(f"  {label:>22}:  {fmt_bytes(v) if 'size' in k else v}")


# --- key ------------------------------------------------------------------------------------------


@click.group()
def key() -> None:
    """Manage keys (passwords) of a repository: list, add, remove, passwd."""


def _new_password(new_password_file: str | None) -> bytes:
    if new_password_file:
        with open(new_password_file, "rb") as f:
            pw = f.read().rstrip(b"\r\n")
    else:
        pw = prompt_password("enter new password", confirm=True)
    if not pw:
        raise InvalidArgument("an empty password is not allowed")
    return pw


@key.command(name="list")
@repo_command
def key_list(ctx: Ctx) -> None:
    """List the repository's keys (* = the one used now)."""
    repo = ctx.open_repo()
    keys = repo.list_keys()
    if ctx.json:
        ctx.emit([{**k, "id": k["id"], "userName": k["username"], "hostName": k["hostname"]} for k in keys])
        return
    rows = [
        [("*" if k["current"] else " ") + k["id"][:8], k["username"], k["hostname"], k["created"][:19]] for k in keys
    ]
    click.echo(table([" ID", "User", "Host", "Created"], rows))


@key.command(name="add")
@repo_command
@click.option("--new-password-file", help="File with the new password.")
def key_add(ctx: Ctx, new_password_file: str | None) -> None:
    """Add a key (password) to the repository."""
    repo = ctx.open_repo()
    with ctx.locked(repo):
        kid = repo.add_key(_new_password(new_password_file))
    if ctx.json:
        ctx.emit({"message_type": "key_added", "id": kid})
    else:
        ctx.print(f"saved new key as {kid[:8]}")


@key.command(name="remove")
@repo_command
@click.argument("key_id")
def key_remove(ctx: Ctx, key_id: str) -> None:
    """Remove a key (not the one in use)."""
    repo = ctx.open_repo()
    with ctx.locked(repo):
        full = repo.resolve_id("key", key_id)
        repo.remove_key(full)
    ctx.print(f"removed key {full[:8]}")


@key.command(name="passwd")
@repo_command
@click.option("--new-password-file", help="File with the new password.")
def key_passwd(ctx: Ctx, new_password_file: str | None) -> None:
    """Change the password of the key in use (adds a new key, removes the old)."""
    repo = ctx.open_repo()
    with ctx.locked(repo):
        old = repo.key_id
        kid = repo.add_key(_new_password(new_password_file))
        repo.key_id = kid
        repo.remove_key(old)
    ctx.print(f"saved new key as {kid[:8]}")


# --- tag ------------------------------------------------------------------------------------------


@click.command()
@repo_command
@_snapshot_filter_options
@click.argument("snapshot_ids", nargs=-1)
@click.option("--set", "set_tags", multiple=True, help="Replace the tags with these.")
@click.option("--add", "add_tags", multiple=True, help="Add these tags.")
@click.option("--remove", "remove_tags", multiple=True, help="Remove these tags.")
def tag(ctx: Ctx, snapshot_ids, hosts, tags, paths, set_tags, add_tags, remove_tags) -> None:  # type: ignore[no-untyped-def]
    """Change the tags of snapshots (each changed snapshot gets a new id)."""
    from orbitvault.client.snapshot import find_snapshot

    def split(vals: tuple[str, ...]) -> list[str]:
        return [t.strip() for v in vals for t in v.split(",") if t.strip()]

    if not (set_tags or add_tags or remove_tags):
        raise InvalidArgument("nothing to do: give --set, --add or --remove")
    if set_tags and (add_tags or remove_tags):
        raise InvalidArgument("--set cannot be combined with --add/--remove")
    repo = ctx.open_repo()
    changed = []
    with ctx.locked(repo):
        snaps = _filtered(repo, hosts, tags, paths)
        if snapshot_ids:
            snaps = [find_snapshot(snaps, s) for s in snapshot_ids]
        for s in snaps:
            new = (
                sorted(set(split(set_tags)))
                if set_tags
                else sorted((set(s.tags) | set(split(add_tags))) - set(split(remove_tags)))
            )
            if new == sorted(s.tags):
                continue
            old_id = s.id
            s.tags = new
            if not s.original:
                s.original = old_id
            repo.save_snapshot(s)
            repo.delete_snapshot(old_id)
            changed.append({"old_snapshot_id": old_id, "new_snapshot_id": s.id})
    if ctx.json:
        ctx.emit({"message_type": "summary", "changed_snapshots": changed})
    else:
        ctx.print(f"modified tags on {len(changed)} snapshots")


# --- unlock ---------------------------------------------------------------------------------------


@click.command()
@repo_command
@click.option("--remove-all", is_flag=True, help="Remove all locks, even those not stale.")
def unlock(ctx: Ctx, remove_all: bool) -> None:
    """Remove stale locks (expired, or of a dead process on this host)."""
    from orbitvault.client.repository import remove_locks

    repo = ctx.open_repo()
    n = remove_locks(repo, all_locks=remove_all)
    if ctx.json:
        ctx.emit({"message_type": "summary", "removed_locks": n})
    else:
        ctx.print(f"removed {n} locks")


# --- cat ------------------------------------------------------------------------------------------


@click.command()
@repo_command
@click.argument("kind", type=click.Choice(["config", "snapshot", "index", "key", "lock", "tree"]))
@click.argument("object_id", required=False)
def cat(ctx: Ctx, kind: str, object_id: str | None) -> None:
    """Print a repository object as JSON (decrypted): config, snapshot ID, index ID, key ID, lock ID, tree ID."""
    from orbitvault.client.index import decode_index
    from orbitvault.client.tree import decode_tree

    repo = ctx.open_repo()
    if kind == "config":
        click.echo(json.dumps(repo.config.to_json(), indent=2))
        return
    if not object_id:
        raise click.UsageError(f"cat {kind} needs an ID")
    if kind == "snapshot":
        s = _one_snapshot(repo, object_id)
        click.echo(json.dumps(s.to_json(), indent=2))
    elif kind == "index":
        iid = repo.resolve_id("index", object_id)
        packs, sup = decode_index(repo.load_object("index", iid))
        doc = {
            "supersedes": [s.hex() for s in sup] or None,
            "packs": [
                {
                    "id": pid.hex(),
                    "blobs": [
                        {
                            "id": e.id.hex(),
                            "type": e.type.name.lower(),
                            "offset": e.offset,
                            "length": e.length,
                            "uncompressed_length": e.raw_length,
                            "compressed": bool(e.flags & 1),
                        }
                        for e in entries
                    ],
                }
                for pid, entries in packs.items()
            ],
        }
        click.echo(json.dumps(doc, indent=2))
    elif kind == "key":
        kid = repo.resolve_id("key", object_id)
        click.echo(repo.backend.get(f"keys/{kid}").decode())
    elif kind == "lock":
        lid = repo.resolve_id("lock", object_id)
        click.echo(json.dumps(json.loads(repo.load_object("lock", lid)), indent=2))
    else:
        repo.load_index()
        tid = bytes.fromhex(object_id)
        click.echo(json.dumps({"nodes": [n.to_json() for n in decode_tree(repo.read_blob(tid))]}, indent=2))


COMMANDS: list[click.Command] = [forget, prune, diff, find, stats, key, tag, unlock, cat]
