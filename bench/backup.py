"""Backup client against restic on the same data, in the same run (issue 5, design section 5).

Builds (once, cached under bench/out/) a mixed data set of `--size` bytes: source text (copies of
the Python standard library with one random line inserted per copy, so copies do not dedupe
whole), binaries (shared libraries and executables, with a random tail per copy) and ~30% random
data in files of 4 KiB..32 MiB, spread over nested directories. Then, for restic (the Debian
package; skipped with a message when absent) and orbitvault, each into a fresh local repository:

  first      backup of the whole tree
  unchanged  backup again, nothing changed
  modified   backup after rewriting ~5% of the bytes (the same files for both tools)
  restore    restore the latest snapshot into an empty directory
  check      check --read-data

Steps alternate between the tools and run --repeat times (the best time is kept; "modified"
runs once), because the disk of a shared machine is noisy; `sync` runs before every step and the
page cache is warmed before the first backups, so both tools read from memory alike. Reported
per step: seconds, MB/s of the data set (MB = 10^6 bytes), peak RSS of the tool's process and
its children together (orbitvault's reader processes; sampled every 20 ms), and the repository
size. `--tools ...,orbit` adds orbitvault into a local constellation
(8 node processes and a gateway on loopback, direct mode, plaintext; a fresh bucket per round),
`orbit-tls` the same with mutual TLS on every hop, and `restic-orbit` restic into a constellation
of the same shape through orbitvault's restic REST endpoint (`python -m orbitvault.rest
--local-nodes 8`: 8 node processes, 4+2, the gateway and the endpoint in one process, plain HTTP
and gRPC on loopback), all started and stopped by this script. Ratios compare like with like:
orbitvault/restic into local directories, orbit/restic-orbit into plaintext constellations.
Each step also reports the tool's CPU seconds (with its children) and, for the constellation
tools, the CPU the constellation's own processes used meanwhile ("constellation cpu").

Mind the file system: right after a mass delete, ext4 (this machine's root file system) skips
recently freed inodes when allocating new ones (`recently_deleted()` in the kernel; up to five
minutes while the inode table is dirty), and creating 20,000 files then takes 2-6 s instead of
0.4 s, for restic and orbitvault alike. This script deletes nothing between steps (restore
targets are removed only at the end, and dropped from the page cache after their step); do not
run it right after deleting a large tree. A
journaled loop-mounted image avoids that, but only with direct I/O on the loop device
(`losetup --direct-io=on`): otherwise every write lands in two page caches, and writing a
600 MB repository costs 1.4 s of kernel CPU instead of 0.2 s, for both tools.

Usage: python bench/backup.py [--size 1GiB] [--tools restic,orbitvault] [--repeat 3] [--steps first,...]
       [--work-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import common

OUT = Path(__file__).resolve().parent / "out"
PASSWORD = "bench-password"
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(s: str) -> int:
    s = s.strip().lower().removesuffix("ib").removesuffix("b")
    if s and s[-1] in _UNITS:
        return int(float(s[:-1]) * _UNITS[s[-1]])
    return int(s)


# --- data set ------------------------------------------------------------------------------------


def _sources() -> tuple[list[Path], list[Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = [p for p in stdlib.rglob("*") if p.suffix in (".py", ".txt", ".rst", ".c", ".h", ".json") and p.is_file()]
    bins: list[Path] = []
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", sysconfig.get_paths()["platlib"]):
        root = Path(d)
        if root.exists():
            bins += [
                p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and 4096 < p.stat().st_size < 64 << 20
            ]
    return sorted(text), sorted(bins)


STEPS = ("first", "unchanged", "modified", "restore", "check")


def build_dataset(root: Path, size: int, seed: int = 42) -> None:
    rng = random.Random(seed)
    text, bins = _sources()
    if not text or not bins:
        raise SystemExit("no source files to build the data set from")
    budget = {"text": int(size * 0.45), "bin": int(size * 0.25), "random": size - int(size * 0.45) - int(size * 0.25)}
    n = 0

    def dest() -> Path:
        nonlocal n
        n += 1
        d = root / f"d{n // 400:03}" / f"s{(n // 20) % 20:02}"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"f{n:06}"

    copy = 0
    while budget["text"] > 0:
        copy += 1
        for src in text:
            data = src.read_bytes()
            lines = data.split(b"\n")
            lines.insert(rng.randrange(len(lines) + 1), b"# copy %d %x" % (copy, rng.getrandbits(64)))
            out = b"\n".join(lines)
            (dest().with_suffix(src.suffix)).write_bytes(out)
            budget["text"] -= len(out)
            if budget["text"] <= 0:
                break
    while budget["bin"] > 0:
        for src in bins:
            data = src.read_bytes() + rng.randbytes(64)
            dest().write_bytes(data)
            budget["bin"] -= len(data)
            if budget["bin"] <= 0:
                break
    while budget["random"] > 0:
        k = min(int(2 ** rng.uniform(12, 25)), budget["random"])
        dest().write_bytes(os.urandom(k))
        budget["random"] -= k


def dataset(size: int) -> Path:
    root = OUT / f"dataset-{size}"
    stamp = root / ".complete"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.monotonic()
        print(f"building a {size / 2**20:.0f} MiB data set in {root} ...", file=sys.stderr)
        build_dataset(root / "tree", size)
        stamp.write_text("ok")
        print(f"  done in {time.monotonic() - t:.0f}s", file=sys.stderr)
    return root / "tree"


def tree_stats(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _d, names in os.walk(root):
        for name in names:
            files += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return files, total


def warm(root: Path) -> None:
    for dirpath, _d, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def evict(root: Path) -> None:
    """Drop a restored tree from the page cache (written back first), keeping its files.

    Restore targets stay until the end (see below), and a GiB of restored copies per tool and
    round would otherwise fill the page cache: from the fourth restore on, every step then paid
    for the kernel reclaiming memory (a 1 GiB restore took 15-25% more CPU, both tools)."""
    os.sync()
    for dirpath, _d, names in os.walk(root):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # a symlink, or a file it may not read
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def modify(root: Path, fraction: float, seed: int = 7) -> int:
    """Rewrite a block in the middle of files until `fraction` of the bytes are touched."""
    rng = random.Random(seed)
    files = sorted(Path(d) / n for d, _s, names in os.walk(root) for n in names)
    rng.shuffle(files)
    _n, total = tree_stats(root)
    touched = 0
    for f in files:
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            block = max(1, min(size, 64 * 1024))
            fh.seek(rng.randrange(max(1, size - block + 1)))
            fh.write(os.urandom(block))
        touched += size
        if touched >= fraction * total:
            break
    return touched


# --- running tools -------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """A process and all its live descendants."""
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now (0 once it is gone)."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            continue
    return total


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Seconds, peak RSS (MiB) and CPU seconds (user + system, with its reaped children) of one
    command. The peak is the largest sum over the process and its children (orbitvault's reader
    and writer processes) sampled every 20 ms, or wait4's peak of the process alone when that is
    larger (a peak shorter than a sample).

    Dirty pages are written back first, so no step pays for the previous step's writes.
    """
    os.sync()
    t = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _tree_rss(p.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _pid, status, usage = os.wait4(p.pid, 0)
    dt = time.monotonic() - t
    done.set()
    sampler.join()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err[-2000:]}")
    return dt, max(peak // (1 << 20), usage.ru_maxrss // 1024), usage.ru_utime + usage.ru_stime


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Tool:
    name = ""

    def __init__(self, work: Path) -> None:
        self.repo = work / f"repo-{self.name}"
        self.env = dict(os.environ)

    def init(self) -> list[str]:
        raise NotImplementedError

    def sky(self) -> list[int]:
        """The processes of the tool's constellation (none for a local directory)."""
        return []

    def backup(self, src: Path) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> list[str]:
        raise NotImplementedError

    def check(self) -> list[str]:
        raise NotImplementedError


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.env |= {"RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(self.repo)}
        self.cache = ["--cache-dir", str(work / "restic-cache")]

    def init(self) -> list[str]:
        return ["restic", "init", *self.cache]

    def backup(self, src: Path) -> list[str]:
        return ["restic", "backup", "--quiet", *self.cache, str(src)]

    def restore(self, target: Path) -> list[str]:
        return ["restic", "restore", "latest", "--quiet", *self.cache, "--target", str(target)]

    def check(self) -> list[str]:
        return ["restic", "check", "--read-data", *self.cache]


class OrbitVault(Tool):
    name = "orbitvault"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.env |= {"ORBITVAULT_PASSWORD": PASSWORD, "ORBITVAULT_REPOSITORY": f"local:{self.repo}"}
        self.ov = [sys.executable, "-m", "orbitvault"]

    def init(self) -> list[str]:
        return [*self.ov, "init", "-q"]

    def backup(self, src: Path) -> list[str]:
        return [*self.ov, "backup", "-q", str(src)]

    def restore(self, target: Path) -> list[str]:
        return [*self.ov, "restore", "latest", "-q", "--target", str(target)]

    def check(self) -> list[str]:
        return [*self.ov, "check", "-q", "--read-data"]


class OrbitConstellation(OrbitVault):
    """orbitvault into `orbit://` on a local constellation (the client's second backend), in
    plaintext like `restic-orbit`'s endpoint; `orbit-tls` is the same with mutual TLS on every hop."""

    name = "orbit"
    tls = False

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        from orbitvault.cli.constellation import Constellation
        from orbitvault.ground.constellation import default_client_settings, sample_dir

        config = work / f"{self.name}.toml"
        security = "" if self.tls else "insecure = true\npki = false\n"
        config.write_text(
            f'orbit = "{sample_dir() / "sample.toml"}"\n[nodes]\ncapacity = "8GiB"\n'
            f'[scrub]\nenabled = false\n[gateway]\nmode = "direct"\n{security}',
            encoding="utf-8",
        )
        state = work / self.name
        self.constellation = Constellation.up(config=config, state_dir=state, progress=lambda *_: None)
        settings = default_client_settings(state)
        assert settings is not None
        self.gateway = settings.gateway
        self.round = 0
        self.env |= {"ORBITVAULT_API_KEY": settings.api_key, "ORBITVAULT_CACHE_DIR": str(work / f"{self.name}-cache")}
        if self.tls:
            self.env |= {
                "ORBITVAULT_TLS_CA": str(settings.tls_ca),
                "ORBITVAULT_TLS_CERT": str(settings.tls_cert),
                "ORBITVAULT_TLS_KEY": str(settings.tls_key),
            }
        else:
            self.env["ORBITVAULT_INSECURE"] = "1"

    def init(self) -> list[str]:
        self.round += 1  # a repository cannot be re-initialised in place: a fresh bucket per round
        self.env["ORBITVAULT_REPOSITORY"] = f"orbit://{self.gateway}/bench{self.round}"
        return super().init()

    def close(self) -> None:
        self.constellation.down()

    def sky(self) -> list[int]:
        from orbitvault.ground import constellation as dom

        c = self.constellation
        return [pid for rec in dom.records(c.layout, c.state).values() for pid in _tree(rec.pid)]


class OrbitConstellationTls(OrbitConstellation):
    name = "orbit-tls"
    tls = True


class ResticConstellation(Restic):
    """restic into a local constellation through orbitvault's restic REST endpoint."""

    name = "restic-orbit"

    def __init__(self, work: Path) -> None:
        from restic_rest import start_endpoint

        super().__init__(work)
        self.cache = ["--cache-dir", str(work / "restic-orbit-cache")]
        self.proc, url, token = start_endpoint(work / "restic-sky", 8, 8 << 30)
        scheme, _, host = url.partition("://")
        self.base = f"rest:{scheme}://bench:{token}@{host}"
        self.round = 0

    def init(self) -> list[str]:
        self.round += 1  # a fresh bucket per round, like `orbit`
        self.env["RESTIC_REPOSITORY"] = f"{self.base}/bench{self.round}/"
        return super().init()

    def sky(self) -> list[int]:
        return _tree(self.proc.pid)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--tools", default="restic,orbitvault")
    ap.add_argument("--repeat", type=int, default=3, help="Runs per step (best kept); 'modified' runs once.")
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="Steps to time, of " + ",".join(STEPS) + " (first always runs: the others need it). "
        "'--steps first --repeat 5' gives five interleaved first backups per tool.",
    )
    ap.add_argument("--json", action="store_true", help="Print the results as JSON.")
    ap.add_argument("--keep", action="store_true", help="Keep the repositories (in a temp dir) for inspection.")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=OUT,
        help="Where the copy of the data set, repositories and restores go (default bench/out).",
    )
    args = ap.parse_args()
    steps = {"first", *(x.strip() for x in args.steps.split(",") if x.strip())}
    if not steps <= set(STEPS):
        raise SystemExit(f"--steps: unknown step(s) {', '.join(sorted(steps - set(STEPS)))}")
    size_req = parse_size(args.size)
    base = dataset(size_req)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if shutil.which("restic") is None:
        for t in ("restic", "restic-orbit"):
            if t in tools:
                print(f"restic is not installed (apt-get install -y restic): skipping {t}", file=sys.stderr)
                tools.remove(t)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ov-bench-", dir=args.work_dir))
    results: dict[str, dict] = {}
    try:
        src = work / "data"
        shutil.copytree(base, src, symlinks=True)
        files, size = tree_stats(src)
        print(f"data set: {files} files, {size / 2**20:.0f} MiB; {common.machine()}", file=sys.stderr)
        warm(src)
        ts: dict[str, type[Tool]] = {
            "restic": Restic,
            "orbitvault": OrbitVault,
            "orbit": OrbitConstellation,
            "orbit-tls": OrbitConstellationTls,
            "restic-orbit": ResticConstellation,
        }
        insts = {name: ts[name](work) for name in tools}

        def step(t: Tool, name: str, cmd: list[str]) -> None:
            sky = t.sky()
            sky0 = common.cpu_seconds(sky)
            dt, rss, cpu = run(cmd, t.env)
            sky_cpu = common.cpu_seconds(sky) - sky0
            cur = results.setdefault(t.name, {}).get(name)
            runs = [*(cur["runs"] if cur else []), round(dt, 3)]  # every run, for pairwise ratios
            if cur is None or dt < cur["seconds"]:
                results[t.name][name] = {
                    "seconds": round(dt, 3),
                    "mb_s": round(size / dt / 1e6, 1),
                    "peak_rss_mib": max(rss, cur["peak_rss_mib"] if cur else 0),
                    "cpu_s": round(cpu, 2),
                    **({"sky_cpu_s": round(sky_cpu, 2)} if sky else {}),
                }
            results[t.name][name]["runs"] = runs
            print(
                f"  {t.name:10} {name:9} {dt:8.2f}s {size / dt / 1e6:8.1f} MB/s  rss {rss:4} MiB  cpu {cpu:6.2f}s"
                + (f"  constellation cpu {sky_cpu:6.2f}s" if sky else ""),
                file=sys.stderr,
            )

        # Steps alternate between the tools and repeat (best time kept): the disk of a shared
        # machine is noisy, and neither tool should pay for the other's write-back.
        for _ in range(args.repeat):
            for t in insts.values():
                shutil.rmtree(t.repo, ignore_errors=True)
                run(t.init(), t.env)
                step(t, "first", t.backup(src))
                if t.repo.exists():
                    results[t.name]["first"]["repo_mib"] = round(du(t.repo) / 2**20, 1)
        for _ in range(args.repeat if "unchanged" in steps else 0):
            for t in insts.values():
                step(t, "unchanged", t.backup(src))
        if "modified" in steps:
            touched = modify(src, 0.05)
            print(f"modified {touched / 2**20:.0f} MiB of files", file=sys.stderr)
            warm(src)
            for t in insts.values():
                step(t, "modified", t.backup(src))
                if t.repo.exists():
                    results[t.name]["modified"]["repo_mib"] = round(du(t.repo) / 2**20, 1)
        # Restore targets are deleted only at the end: ext4 allocates inodes slowly right after
        # mass deletion (recently_deleted scans), which would tax whichever tool comes next.
        for k in range(args.repeat if "restore" in steps else 0):
            for t in insts.values():
                step(t, "restore", t.restore(work / f"restore-{t.name}-{k}"))
                evict(work / f"restore-{t.name}-{k}")
        for _ in range(args.repeat if "check" in steps else 0):
            for t in insts.values():
                step(t, "check", t.check())
        for ours, theirs in (("orbitvault", "restic"), ("orbit", "restic-orbit")):
            if ours in results and theirs in results:
                r, o = results[theirs], results[ours]
                results[f"ratio_{ours}_to_{theirs}"] = {
                    k: round(r[k]["seconds"] / o[k]["seconds"], 2) for k in r if isinstance(r[k], dict) and k in o
                }
                # Round by round (the tools ran one after the other): how much the best-of ratio
                # owes to a lucky pairing on a noisy machine.
                results[f"rounds_{ours}_to_{theirs}"] = {
                    k: [round(a / b, 2) for a, b in zip(r[k]["runs"], o[k]["runs"], strict=False)]
                    for k in r
                    if isinstance(r[k], dict) and k in o
                }
        results["dataset"] = {"files": files, "bytes": size}
        results["machine"] = common.machine()
    finally:
        for t in locals().get("insts", {}).values():
            if isinstance(t, OrbitConstellation | ResticConstellation):
                t.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (OUT / "backup.json").write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"\n{results['machine']}; {files} files, {size / 1e6:.0f} MB")
        ratios = [k for k in results if k.startswith("ratio_")]
        print(f"{'step':10} " + " ".join(f"{t:>24}" for t in insts) + "".join(f" {r[6:]:>24}" for r in ratios))
        for k in (x for x in STEPS if x in steps):
            cells = [
                f"{results[t][k]['seconds']:7.2f}s {results[t][k]['mb_s']:6.1f}MB/s {results[t][k]['peak_rss_mib']:4}M"
                for t in insts
            ]
            print(
                f"{k:10} "
                + " ".join(f"{c:>24}" for c in cells)
                + "".join(f" {results[r].get(k, ''):>24}" for r in ratios)
            )
        for r in (k for k in results if k.startswith("rounds_")):
            per = results[r].get("first", [])
            print(f"first backup, {r[7:]} round by round: {', '.join(f'{x:.2f}' for x in per)}")


if __name__ == "__main__":
    main()
