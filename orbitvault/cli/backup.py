"""The restic-style backup commands: init, backup, snapshots, ls, restore, check (this module) and
forget, prune, diff, find, stats, key, tag, unlock, cat (`backup_maint.py`).

Adapters only: options are parsed here, the work is in `orbitvault.client`. `register(cli)`
attaches every command to the top-level `orbitvault` group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import posixpath
import stat as statmod
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import click

from orbitvault.cli import backup_common
from orbitvault.cli.backup_common import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    Ctx,
    ExitCode,
    fmt_bytes,
    fmt_time,
    live_progress,
    repo_command,
    table,
)
from orbitvault.errors import InvalidArgument, NotFound


def _snapshot_filter_options(fn: Any) -> Any:
    fn = click.option("--path", "paths", multiple=True, help="Only snapshots including this path.")(fn)
    fn = click.option("--tag", "tags", multiple=True, help="Only snapshots with these tags (a,b = both).")(fn)
    fn = click.option("-H", "--host", "hosts", multiple=True, help="Only snapshots of this host.")(fn)
    return fn


def _filtered(repo: Any, hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...]) -> list[Any]:
    from orbitvault.client.snapshot import filter_snapshots, parse_tag_lists

    return filter_snapshots(repo.load_snapshots(), hosts=hosts, tags=parse_tag_lists(tags), paths=paths)


def _one_snapshot(repo: Any, ref: str, hosts: tuple[str, ...] = (), tags: tuple[str, ...] = (), paths=()) -> Any:
    from orbitvault.client.snapshot import find_snapshot

    snaps = _filtered(repo, hosts, tags, paths) if ref.startswith("latest") else repo.load_snapshots()
    return find_snapshot(snaps, ref)


def _split_ref(ref: str) -> tuple[str, str | None]:
    """restic's SNAPSHOT[:SUBFOLDER] -> (snapshot reference, subfolder or None)."""
    sid, sep, sub = ref.partition(":")
    return sid, (sub if sep else None)


def _subtree(repo: Any, snap: Any, subfolder: str) -> tuple[bytes, str]:
    """The tree of `subfolder` in `snap` and its normalised path ("" for the root), found by
    walking the trees from the root, as restic does for SNAPSHOT:SUBFOLDER."""
    tree, walked = snap.tree, ""
    for name in posixpath.normpath("/" + subfolder).split("/"):
        if not name:
            continue
        walked += "/" + name
        node = next((n for n in repo.load_tree(tree) if n.name == name), None)
        if node is None:
            raise NotFound(f"path {walked} not found in snapshot {snap.short_id}")
        if node.type != "dir" or node.subtree is None:
            raise InvalidArgument(f"path {walked} in snapshot {snap.short_id} is not a directory")
        tree = node.subtree
    return tree, walked


def snapshot_json(s: Any) -> dict[str, Any]:
    return {**s.to_json(), "id": s.id, "short_id": s.short_id}


# --- init -----------------------------------------------------------------------------------------


@click.command()
@repo_command
@click.option("--compression-level", type=int, default=3, show_default=True, help="zstd level (0 = off).")
@click.option("--chunker-min", type=int, hidden=True, help="Tests only: FastCDC minimum chunk size (bytes).")
@click.option("--chunker-avg", type=int, hidden=True, help="Tests only: FastCDC average chunk size (bytes).")
@click.option("--chunker-max", type=int, hidden=True, help="Tests only: FastCDC maximum chunk size (bytes).")
@click.option("--pack-size", type=int, hidden=True, help="Tests only: target pack size (bytes).")
@click.option("--kdf-time", type=int, hidden=True, help="Tests only: Argon2id time cost.")
@click.option("--kdf-memory", type=int, hidden=True, help="Tests only: Argon2id memory (KiB).")
@click.option("--kdf-parallelism", type=int, hidden=True, help="Tests only: Argon2id lanes.")
def init(
    ctx: Ctx,
    compression_level: int,
    chunker_min: int | None,
    chunker_avg: int | None,
    chunker_max: int | None,
    pack_size: int | None,
    kdf_time: int | None,
    kdf_memory: int | None,
    kdf_parallelism: int | None,
) -> None:
    """Create a new repository."""
    import os

    from orbitvault.client.chunker import ChunkerParams
    from orbitvault.client.crypto import KdfParams
    from orbitvault.client.repository import DEFAULT_PACK_SIZE, Repository

    defaults = ChunkerParams()
    chunker = ChunkerParams(
        min_size=chunker_min or defaults.min_size,
        avg_size=chunker_avg or defaults.avg_size,
        max_size=chunker_max or defaults.max_size,
        seed=(int.from_bytes(os.urandom(8), "little") >> 1) | 1,
    )
    kd = KdfParams()
    kdf = KdfParams(kdf_time or kd.time_cost, kdf_memory or kd.memory_kib, kdf_parallelism or kd.parallelism)
    backend = ctx.backend()
    password = ctx.password(confirm=True, prompt="enter password for new repository")
    if not password:
        raise InvalidArgument("an empty password is not allowed")
    repo = Repository.init(
        backend,
        password,
        chunker=chunker,
        pack_size=pack_size or DEFAULT_PACK_SIZE,
        compression_level=compression_level,
        kdf=kdf,
    )
    if ctx.json:
        ctx.emit({"message_type": "initialized", "id": repo.config.id, "repository": backend.url})
    else:
        ctx.print(f"created orbitvault repository {repo.config.id[:10]} at {backend.url}")
        ctx.print("Please note that knowledge of your password is required to access the repository.")
        ctx.print("Losing your password means that your data is irrecoverably lost.")


# --- backup ---------------------------------------------------------------------------------------


@click.command()
@repo_command
@click.argument("paths", nargs=-1)
@click.option("-e", "--exclude", "excludes", multiple=True, help="Exclude a pattern (repeatable).")
@click.option("--iexclude", "iexcludes", multiple=True, help="Exclude a pattern, case-insensitive.")
@click.option("--exclude-file", "exclude_files", multiple=True, help="Patterns to exclude, one per line.")
@click.option("--iexclude-file", "iexclude_files", multiple=True, help="Like --exclude-file, case-insensitive.")
@click.option(
    "--exclude-caches", is_flag=True, help="Skip the contents of directories with a valid CACHEDIR.TAG (tag kept)."
)
@click.option(
    "--exclude-if-present",
    "exclude_if_present",
    multiple=True,
    metavar="NAME[:HEADER]",
    help="Skip the contents of directories holding NAME (starting with HEADER), NAME kept (repeatable).",
)
@click.option("--exclude-larger-than", metavar="SIZE", help="Skip files larger than SIZE (k, m, g, t: 1M = 1 MiB).")
@click.option("--files-from", multiple=True, metavar="FILE", help="Paths or globs, one a line, # comments.")
@click.option("--files-from-verbatim", multiple=True, metavar="FILE", help="Paths, one a line, taken literally.")
@click.option("--files-from-raw", multiple=True, metavar="FILE", help="Paths, each NUL-terminated (find -print0).")
@click.option("--stdin", is_flag=True, help="Back up what is read from standard input, as one file.")
@click.option("--stdin-filename", default="stdin", show_default=True, help="Name of that file in the snapshot.")
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross file system boundaries.")
@click.option("--tag", "tags", multiple=True, help="Tags for the snapshot (a,b or repeated).")
@click.option("-H", "--host", help="Host name to record (default: this host's).")
@click.option("--parent", help="Parent snapshot (default: latest of this host with the same paths).")
@click.option("-f", "--force", is_flag=True, help="Re-read every file (ignore the parent).")
@click.option("--ignore-inode", is_flag=True, help="Inode changes alone do not make a file changed.")
@click.option("--ignore-ctime", is_flag=True, help="ctime changes alone do not make a file changed.")
@click.option("-n", "--dry-run", is_flag=True, help="Do everything but store anything.")
@click.option(
    "--read-concurrency", type=click.IntRange(1, 64), default=2, show_default=True, help="Files read at once."
)
@click.option(
    "--read-processes",
    type=click.IntRange(0, 64),
    help="Processes that scan directories and read small files beside the walk (default: 2 on a "
    "machine with 2+ cores, once 512 small files were read; 0: none).",
)
@click.option("--limit-upload", type=click.IntRange(1), help="Upload limit in KiB/s.")
@click.option("--time", "time_", help='Snapshot time instead of now ("YYYY-MM-DD HH:MM:SS").')
def backup(
    ctx: Ctx,
    paths: tuple[str, ...],
    excludes: tuple[str, ...],
    iexcludes: tuple[str, ...],
    exclude_files: tuple[str, ...],
    iexclude_files: tuple[str, ...],
    exclude_caches: bool,
    exclude_if_present: tuple[str, ...],
    exclude_larger_than: str | None,
    files_from: tuple[str, ...],
    files_from_verbatim: tuple[str, ...],
    files_from_raw: tuple[str, ...],
    stdin: bool,
    stdin_filename: str,
    one_file_system: bool,
    tags: tuple[str, ...],
    host: str | None,
    parent: str | None,
    force: bool,
    ignore_inode: bool,
    ignore_ctime: bool,
    dry_run: bool,
    read_concurrency: int,
    read_processes: int | None,
    limit_upload: int | None,
    time_: str | None,
) -> None:
    """Back up files and directories (or, with --stdin, a stream) into a new snapshot.

    Exit code 3 when some files could not be read (the snapshot is saved without them).
    """
    from orbitvault.client.archiver import Archiver, BackupOptions
    from orbitvault.client.filters import parse_size, read_pattern_files, tag_files

    lists = (
        ("--files-from", files_from),
        ("--files-from-verbatim", files_from_verbatim),
        ("--files-from-raw", files_from_raw),
    )
    if stdin and paths:
        raise InvalidArgument("--stdin was given and files/dirs were listed as arguments")
    if stdin and (flag := next((f for f, given in lists if given), None)):
        raise InvalidArgument(f"--stdin and {flag} cannot be used together")
    if stdin or "-" in files_from + files_from_verbatim + files_from_raw:
        _password_not_on_stdin(ctx)
    targets = [] if stdin else _collect_targets(ctx, paths, files_from, files_from_verbatim, files_from_raw)
    try:
        tag_files(exclude_if_present)
    except ValueError as e:
        raise InvalidArgument(f"bad --exclude-if-present: {e}") from None
    max_size = None
    if exclude_larger_than is not None:
        try:
            max_size = parse_size(exclude_larger_than)
        except ValueError as e:
            raise InvalidArgument(f"--exclude-larger-than: {e}") from None
    when = None
    if time_:
        try:
            when = datetime.fromisoformat(time_).astimezone()
        except ValueError:
            raise InvalidArgument(f"bad --time {time_!r}: use YYYY-MM-DD HH:MM:SS") from None
    tag_list = [t.strip() for v in tags for t in v.split(",") if t.strip()]
    opts = BackupOptions(
        paths=targets,
        excludes=list(excludes) + read_pattern_files(exclude_files),
        iexcludes=list(iexcludes) + read_pattern_files(iexclude_files),
        exclude_caches=exclude_caches,
        exclude_if_present=list(exclude_if_present),
        exclude_larger_than=max_size,
        stdin_fd=click.get_binary_stream("stdin").fileno() if stdin else None,
        stdin_filename=stdin_filename,
        one_file_system=one_file_system,
        tags=tag_list,
        host=host,
        parent=parent,
        force=force,
        ignore_inode=ignore_inode,
        ignore_ctime=ignore_ctime,
        dry_run=dry_run,
        read_concurrency=read_concurrency,
        read_processes=read_processes,
        limit_upload_kib=limit_upload,
        time=when,
    )
    repo = ctx.open_repo()
    with ctx.locked(repo) as lock:
        arch = Archiver(repo, opts, lock=lock)
        arch.on_error = lambda e: ctx.error(e.path, e.message, "archival")

        def describe() -> tuple[str, float, float | None]:
            s = arch.summary
            return (
                f"{s.total_files_processed} files, {fmt_bytes(s.bytes_read)} read  {arch.current_path[-40:]}",
                s.bytes_read,
                None,
            )

        with live_progress(ctx, describe):
            snap, summary = arch.run()
    for w in arch.warnings:
        ctx.warn(w)
    if ctx.json:
        ctx.emit(summary.to_json())
    else:
        s = summary
        if arch.parent is not None:
            ctx.print(f"using parent snapshot {arch.parent.short_id}")
        ctx.print(f"\nFiles:       {s.files_new:5} new, {s.files_changed:5} changed, {s.files_unmodified:5} unmodified")
        ctx.print(f"Dirs:        {s.dirs_new:5} new, {s.dirs_changed:5} changed, {s.dirs_unmodified:5} unmodified")
        ctx.print(f"Added to the repository: {fmt_bytes(s.data_added)} ({fmt_bytes(s.data_added_packed)} stored)")
        ctx.print(
            f"\nprocessed {s.total_files_processed} files, {fmt_bytes(s.total_bytes_processed)} "
            f"in {s.total_duration:.2f}s (read {s.files_read} files, {fmt_bytes(s.bytes_read)})"
        )
        if snap is not None:
            ctx.print(f"snapshot {snap.short_id} saved")
        else:
            ctx.print("dry run: nothing was stored")
    if arch.errors:
        if not ctx.json:
            click.echo(f"Warning: at least one source file could not be read ({len(arch.errors)} errors)", err=True)
        raise ExitCode(EXIT_INCOMPLETE)


def _password_not_on_stdin(ctx: Ctx) -> None:
    """Standard input carries data: the password must come from elsewhere (restic's rule)."""
    if not (ctx.password_file or ctx.password_command or os.environ.get("ORBITVAULT_PASSWORD") is not None):
        raise InvalidArgument(
            "cannot read both the password and data from standard input: "
            "use ORBITVAULT_PASSWORD, --password-file or --password-command"
        )


def _collect_targets(
    ctx: Ctx, paths: tuple[str, ...], files_from: tuple[str, ...], verbatim: tuple[str, ...], raw: tuple[str, ...]
) -> list[str]:
    """The positional paths plus those listed in --files-from* files.

    A listed path that does not exist stops the backup before anything is read (exit 1): a list
    is usually generated, and a stale one should be noticed, not silently half-used. A glob that
    matches nothing is only a warning, as in restic.
    """
    from orbitvault.client.filters import (
        expand_glob,
        has_magic,
        read_files_from,
        read_files_from_raw,
        read_files_from_verbatim,
    )

    literal: list[tuple[str, str]] = []  # (flag, path): must exist
    out: list[str] = []

    def read(flag: str, f: str, reader: Callable[[str], list[str]]) -> list[str]:
        try:
            return reader(f)
        except OSError as e:
            raise InvalidArgument(f"{flag} {f}: {e.strerror or e}") from None
        except ValueError as e:
            raise InvalidArgument(f"{flag} {f}: {e}") from None

    for f in files_from:
        for line in read("--files-from", f, read_files_from):
            if not has_magic(line):
                literal.append(("--files-from", line))
                continue
            try:
                matches = expand_glob(line)
            except ValueError as e:
                raise InvalidArgument(f"--files-from {f}: {e}") from None
            if not matches:
                ctx.warn(f"pattern {line!r} does not match any files, skipping")
            out += matches
    for f in verbatim:
        literal += [("--files-from-verbatim", p) for p in read("--files-from-verbatim", f, read_files_from_verbatim)]
    for f in raw:
        literal += [("--files-from-raw", p) for p in read("--files-from-raw", f, read_files_from_raw)]
    missing = [(flag, p) for flag, p in literal if not os.path.lexists(p)]
    if missing:
        flag, p = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidArgument(f"file {p!r} listed by {flag} does not exist{more}")
    out += [p for _flag, p in literal] + list(paths)
    if not out:
        raise InvalidArgument("nothing to back up: give files/dirs, --files-from* or --stdin")
    return out


# --- snapshots ------------------------------------------------------------------------------------


@click.command()
@repo_command
@_snapshot_filter_options
@click.argument("ids", nargs=-1)
@click.option("--latest", type=int, help="Only the latest N snapshots of each host and path set.")
def snapshots(
    ctx: Ctx,
    ids: tuple[str, ...],
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
    latest: int | None,
) -> None:
    """List snapshots."""
    from orbitvault.client.snapshot import find_snapshot, group_snapshots

    repo = ctx.open_repo()
    snaps = _filtered(repo, hosts, tags, paths)
    if ids:
        snaps = [find_snapshot(snaps, i) for i in ids]
    if latest:
        snaps = sorted(
            [s for _k, g in group_snapshots(snaps, ("host", "paths")) for s in g[-latest:]], key=lambda s: s.time
        )
    if ctx.json:
        ctx.emit([snapshot_json(s) for s in snaps])
        return
    rows = [
        [
            s.short_id,
            fmt_time(s.time),
            s.hostname,
            ",".join(s.tags),
            "\n".join(s.paths) if len(s.paths) == 1 else s.paths[0],
        ]
        for s in snaps
    ]
    if not ctx.quiet:
        click.echo(table(["ID", "Time", "Host", "Tags", "Paths"], rows))
        click.echo(f"{len(snaps)} snapshots")


# --- ls -------------------------------------------------------------------------------------------


def _walk(repo: Any, tree: bytes, prefix: str) -> Any:
    for n in repo.load_tree(tree):
        path = f"{prefix}/{n.name}"
        yield path, n
        if n.type == "dir" and n.subtree is not None:
            yield from _walk(repo, n.subtree, path)


def node_json(path: str, n: Any) -> dict[str, Any]:
    def ts(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat()

    d = {
        "name": n.name,
        "type": n.type,
        "path": path,
        "uid": n.uid,
        "gid": n.gid,
        "size": n.size if n.type == "file" else None,
        "mode": n.mode | _type_bits(n.type),
        "permissions": statmod.filemode(n.mode | _type_bits(n.type)),
        "mtime": ts(n.mtime_ns),
        "atime": ts(n.atime_ns),
        "ctime": ts(n.ctime_ns),
        "inode": n.inode,
        "struct_type": "node",
    }
    if n.type == "symlink":
        d["linktarget"] = n.linktarget
    if d["size"] is None:
        del d["size"]
    return d


def _type_bits(t: str) -> int:
    return {"file": statmod.S_IFREG, "dir": statmod.S_IFDIR, "symlink": statmod.S_IFLNK}.get(t, 0)


def long_line(path: str, n: Any) -> str:
    mode = statmod.filemode(n.mode | _type_bits(n.type))
    when = fmt_time(datetime.fromtimestamp(n.mtime_ns / 1e9))
    user = n.user or str(n.uid)
    group = n.group or str(n.gid)
    line = f"{mode} {user:>8} {group:>8} {n.size:>12} {when} {path}"
    if n.type == "symlink":
        line += f" -> {n.linktarget}"
    return line


@click.command(name="ls")
@repo_command
@_snapshot_filter_options
@click.argument("snapshot_id")
@click.argument("dirs", nargs=-1)
@click.option("-l", "--long", "long_", is_flag=True, help="Long listing.")
@click.option("--recursive", is_flag=True, help="With DIRs: list below them recursively.")
def ls_cmd(
    ctx: Ctx,
    snapshot_id: str,
    dirs: tuple[str, ...],
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
    long_: bool,
    recursive: bool,
) -> None:
    """List files of a snapshot (optionally only in DIRs); SNAPSHOT:SUBFOLDER lists below SUBFOLDER."""
    repo = ctx.open_repo(load_index=True)
    ref, subfolder = _split_ref(snapshot_id)
    snap = _one_snapshot(repo, ref, hosts, tags, paths)
    tree, prefix = _subtree(repo, snap, subfolder) if subfolder is not None else (snap.tree, "")
    wanted = [d.rstrip("/") or "/" for d in dirs]

    def selected(path: str) -> bool:
        if not wanted:
            return True
        for d in wanted:
            parent = path.rsplit("/", 1)[0] or "/"
            if parent == d or path == d or (recursive and path.startswith(d.rstrip("/") + "/")):
                return True
        return False

    if ctx.json:
        ctx.emit({**snapshot_json(snap), "struct_type": "snapshot"})
    elif not ctx.quiet:
        click.echo(f"snapshot {snap.short_id} of {snap.paths} at {snap.time}:", err=True)
    for path, n in _walk(repo, tree, prefix):
        if not selected(path):
            continue
        if ctx.json:
            ctx.emit(node_json(path, n))
        elif long_:
            click.echo(long_line(path, n))
        else:
            click.echo(path)


# --- restore --------------------------------------------------------------------------------------


@click.command()
@repo_command
@_snapshot_filter_options
@click.argument("snapshot_id")
@click.option("-t", "--target", required=True, help="Directory to restore into.")
@click.option("-i", "--include", "includes", multiple=True, help="Restore only paths matching this pattern.")
@click.option("-e", "--exclude", "excludes", multiple=True, help="Do not restore paths matching this pattern.")
@click.option("--iinclude", "iincludes", multiple=True, help="--include, case-insensitive.")
@click.option("--iexclude", "iexcludes", multiple=True, help="--exclude, case-insensitive.")
@click.option("--verify", is_flag=True, help="Re-read restored files and compare them with the snapshot.")
@click.option("--sparse/--no-sparse", default=True, show_default=True, help="Leave holes for all-zero chunks.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be restored.")
@click.option(
    "--write-processes",
    type=click.IntRange(0, 64),
    help="Processes that decrypt and write the contents (default: 2 on a machine with 2+ cores "
    "for 2000+ blobs; 0: none).",
)
def restore(
    ctx: Ctx,
    snapshot_id: str,
    target: str,
    includes: tuple[str, ...],
    excludes: tuple[str, ...],
    iincludes: tuple[str, ...],
    iexcludes: tuple[str, ...],
    verify: bool,
    sparse: bool,
    dry_run: bool,
    write_processes: int | None,
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
) -> None:
    """Restore a snapshot into --target. Nothing is ever written outside the target.

    SNAPSHOT:SUBFOLDER (e.g. latest:/home/user/docs) restores only that directory, its contents
    directly in the target; --include/--exclude patterns are then relative to it.

    From an orbit:// repository whose gateway keeps objects in orbit (scheduled mode), the objects
    needed are first restored from orbit (RestoreObject), in three rounds: metadata, trees, then
    the data packs; each shows its ETA on the gateway's clock and waits until it is ready.
    """
    from orbitvault.client.cold import ColdStager, data_pack_names, metadata_names, tree_pack_names
    from orbitvault.client.restorer import RestoreOptions, Restorer

    if backup_common.PROCESS_ENDS_WITH_COMMAND:
        # No cyclic collection for the whole command: the Restorer pauses it anyway (its plan is
        # a large heap of acyclic records), and re-enabled at its end, the first collection
        # walked that heap once more for 0.08 s (1 GiB) just before the process ended.
        gc.disable()

    backend = ctx.backend()
    with _staging_display(ctx) as on_event:
        stager = ColdStager.for_backend(backend, on_event=on_event)
        if stager is not None:
            stager.stage("metadata", metadata_names(backend))
        repo = ctx.open_repo(load_index=True, backend=backend)
        ref, subfolder = _split_ref(snapshot_id)
        snap = _one_snapshot(repo, ref, hosts, tags, paths)
        if stager is not None:
            stager.stage("trees", tree_pack_names(repo))
    shown = snap.short_id
    if subfolder is not None:
        # The Restorer restores a snapshot's tree: give it a copy whose tree is the subfolder's.
        tree, where = _subtree(repo, snap, subfolder)
        snap = dataclasses.replace(snap, tree=tree)
        shown = f"{snap.short_id}:{where or '/'}"
    opts = RestoreOptions(
        target=target,
        includes=list(includes),
        excludes=list(excludes),
        iincludes=list(iincludes),
        iexcludes=list(iexcludes),
        verify=verify,
        sparse=sparse,
        dry_run=dry_run,
        processes=write_processes,
    )
    if stager is not None and not dry_run:
        with _staging_display(ctx) as on_event:
            stager.on_event = on_event
            stager.stage("data", data_pack_names(Restorer(repo, snap, opts).needed_packs()))
    if not ctx.json and not ctx.quiet:
        click.echo(f"restoring snapshot {shown} of {snap.paths} at {snap.time} to {target}", err=True)
    with ctx.locked(repo):
        r = Restorer(repo, snap, opts)
        r.on_error = lambda e: ctx.error(e.path, e.message, "restore")
        whole = subfolder is None  # the snapshot's byte total says nothing about one subfolder
        total = float((snap.summary or {}).get("total_bytes_processed") or 0) or None if whole else None
        with live_progress(ctx, lambda: (f"{r.summary.files_restored} files", r.bytes_done, total)):
            summary = r.run()
    if ctx.json:
        ctx.emit(summary.to_json())
    else:
        s = summary
        ctx.print(
            f"restored {s.files_restored} files, {s.dirs_restored} dirs, {s.symlinks_restored} symlinks, "
            f"{fmt_bytes(s.bytes_restored)} in {s.total_duration:.2f}s"
            + (f"; verified {s.files_verified} files" if verify else "")
        )
    if r.errors:
        if not ctx.json:
            click.echo(f"Fatal: there were {len(r.errors)} errors", err=True)
        raise ExitCode(EXIT_ERROR)


@contextlib.contextmanager
def _staging_display(ctx: Ctx) -> Iterator[Callable[[Any], None]]:
    """Show cold-restore phases: a rich status line on a terminal, JSON lines with --json, else
    plain lines on stderr. ETAs are on the gateway's clock, which may be simulated."""
    from orbitvault.orbit.timeutil import format_duration, format_time

    status: Any = None
    console: Any = None
    if ctx.progress_enabled:
        from rich.console import Console

        console = Console(stderr=True)

    def when(ms: int, now_ms: int, simulated: bool) -> str:
        clock = "simulated clock" if simulated else "gateway clock"
        return f"{format_time(ms / 1000)} (in {format_duration(max(ms - now_ms, 0) / 1000)}, {clock})"

    def on_event(ev: Any) -> None:
        nonlocal status
        st = ev.phase
        if ctx.json:
            if ev.kind == "requested":
                ctx.emit(
                    {
                        "message_type": "restore_objects",
                        "phase": st.phase,
                        "objects": st.objects,
                        "pending": ev.pending,
                        "eta_unix_ms": st.eta_unix_ms,
                        "eta_bound_unix_ms": st.eta_bound_unix_ms,
                        "gateway_time_unix_ms": ev.now_unix_ms,
                        "simulated_clock": st.simulated,
                    }
                )
            elif ev.kind == "ready":
                ctx.emit(st.to_json())
            return
        if ctx.quiet or st.pending == 0:
            return
        if ev.kind == "requested":
            line = (
                f"restoring {st.pending} of {st.objects} object(s) ({st.phase}) from orbit: ready by "
                f"{when(st.eta_unix_ms, ev.now_unix_ms, st.simulated)}"
            )
            if console is None:
                click.echo(line, err=True)
                return
            console.print(line)
            status = console.status(f"{st.phase}: waiting for {st.pending} object(s)")
            status.start()
        elif ev.kind == "waiting" and status is not None:
            status.update(
                f"{st.phase}: {ev.pending} of {st.pending} object(s) still in orbit; gateway time "
                f"{format_time(ev.now_unix_ms / 1000)}, ETA {format_time(st.eta_unix_ms / 1000)}"
            )
        elif ev.kind == "ready":
            if status is not None:
                status.stop()
                status = None
            waited = format_duration(max(st.ready_unix_ms - st.requested_unix_ms, 0) / 1000)
            line = f"{st.objects} object(s) ({st.phase}) readable after {waited} on the gateway's clock"
            (console.print if console is not None else lambda t: click.echo(t, err=True))(line)

    try:
        yield on_event
    finally:
        if status is not None:
            status.stop()


# --- check ----------------------------------------------------------------------------------------


@click.command()
@repo_command
@click.option("--read-data", is_flag=True, help="Download and verify every pack.")
@click.option("--read-data-subset", help='Verify a subset: "n/t", "x%" or a size like "500M".')
def check(ctx: Ctx, read_data: bool, read_data_subset: str | None) -> None:
    """Check the repository for errors (structure; --read-data: contents too)."""
    from orbitvault.client.check import Checker

    repo = ctx.open_repo()
    with ctx.locked(repo):
        state = {"done": 0, "total": 0}

        def progress(_phase: str, done: int, total: int) -> None:
            state["done"], state["total"] = done, total

        checker = Checker(repo, progress=progress)
        ctx.print("load indexes, check packs, snapshots, trees and blobs")
        with live_progress(
            ctx, lambda: (f"packs read {state['done']}/{state['total']}", state["done"], state["total"] or None)
        ):
            res = checker.run(read_data=read_data, subset=read_data_subset)
    if ctx.json:
        ctx.emit(res.to_json())
    else:
        for h in res.hints:
            ctx.print(f"hint: {h}")
        for e in res.errors:
            click.echo(f"error: {e}", err=True)
        if res.packs_read:
            ctx.print(f"read {res.packs_read} packs ({fmt_bytes(res.bytes_read)})")
        if not res.errors:
            ctx.print("no errors were found")
    if res.errors:
        if not ctx.json:
            click.echo("Fatal: repository contains errors", err=True)
        raise ExitCode(EXIT_ERROR)


def register(cli: click.Group) -> None:
    """Attach every backup command to the top-level `orbitvault` group."""
    from orbitvault.cli import backup_maint
    from orbitvault.cli.backup_status import status

    for cmd in (init, backup, snapshots, ls_cmd, restore, check, status):
        cli.add_command(cmd)
    for cmd in backup_maint.COMMANDS:
        cli.add_command(cmd)
