"""restic backup / restore MB/s into orbitvault's REST endpoint vs restic's own local repository.

Same generated tree, same run, same machine. The tree mimics design §5's restic reference (a mixed
tree, 30% random data, many small files): `--size-mib` MiB (default 128) in about 48 files per MiB.

orbitvault side: `python -m orbitvault.rest --local-nodes N` (N storage node processes on loopback,
4+2 below 14 nodes; the gateway and the REST server in one process); restic talks to it over
`rest:http://...`. Local side: `restic init` on a directory. For each: init, first backup,
unchanged re-backup, restore (checked byte for byte against the source). MB/s are of source
bytes (MB = 10^6). Also reported: the gateway+REST process's peak RSS (VmHWM), which must not
grow with the data.

Everything shares the machine's cores (restic, gateway, nodes), so the figures are for the
whole constellation on one host.

Usage: python bench/restic_rest.py [--size-mib 128] [--nodes 6] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

MiB = 1 << 20
PASSWORD = "bench password"


def make_tree(root: Path, size: int, seed: int = 1) -> tuple[int, int]:
    """30% of the bytes in incompressible files of ~1 MiB, the rest in small text-like files."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(2, 9)).hex() for _ in range(4096)]
    total = files = 0
    random_budget = int(size * 0.3)
    while total < random_budget:
        n = min(rnd.randint(MiB // 2, 3 * MiB // 2), random_budget - total)
        d = root / "blobs" / f"d{files % 16:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob{files}.bin").write_bytes(rnd.randbytes(n))
        total += n
        files += 1
    while total < size:
        n = min(int(rnd.expovariate(1 / 14_000)) + 64, size - total)
        text = " ".join(rnd.choices(words, k=n // 8 + 1)).encode()[:n]
        d = root / "src" / f"p{files % 64:02d}" / f"q{files % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{files}.txt").write_bytes(text)
        total += len(text)
        files += 1
    return total, files


def digest_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def restic(repo: str, env: dict[str, str], *args: str) -> float:
    t = time.perf_counter()
    p = subprocess.run(["restic", "--repo", repo, "-q", *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"restic {' '.join(args)} failed: {p.stderr.strip()[-2000:]}")
    return elapsed


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_endpoint(root: Path, nodes: int, capacity: int) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [sys.executable, "-m", "orbitvault.rest", "--local-nodes", str(nodes), "--dir", str(root)]
    cmd += ["--node-capacity", str(capacity), "--tenant", "bench", "--no-prometheus"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = token = ""
    for _ in range(3):
        line = proc.stdout.readline().strip()
        if m := re.match(r"^listening on (\S+)$", line):
            url = m.group(1)
        elif line.startswith("token "):
            token = line.split()[1]
    if not url or not token:
        proc.kill()
        raise SystemExit("the REST endpoint did not start")
    return proc, url, token


def run_target(name: str, repo: str, tree: Path, work: Path, env: dict[str, str], size: int) -> dict[str, float]:
    restic(repo, env, "init")
    first = restic(repo, env, "backup", str(tree))
    again = restic(repo, env, "backup", str(tree))
    out = work / f"restore-{name}"
    restore = restic(repo, env, "restore", "latest", "--target", str(out))
    ok = digest_tree(out / str(tree).lstrip("/")) == digest_tree(tree)
    if not ok:
        raise SystemExit(f"{name}: the restored tree differs from the source")
    shutil.rmtree(out)
    return {
        "backup_mb_s": size / first / 1e6,
        "backup_s": first,
        "rebackup_s": again,
        "restore_mb_s": size / restore / 1e6,
        "restore_s": restore,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=128, help="size of the generated tree (default 128)")
    ap.add_argument("--nodes", type=int, default=6, help="storage node processes (default 6: 4+2)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (Debian: apt-get install restic)")
    version = subprocess.run(["restic", "version"], capture_output=True, text=True, check=False).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="ov-bench-restic-"))
    proc = None
    try:
        tree = work / "tree"
        size, files = make_tree(tree, args.size_mib * MiB)
        env = {
            "RESTIC_PASSWORD": PASSWORD,
            "HOME": str(work),
            "XDG_CACHE_HOME": str(work / "cache"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        capacity = 4 * size * 6 // 4 // args.nodes + 2**30
        proc, url, token = start_endpoint(work / "sky", args.nodes, capacity)
        scheme, _, host = url.partition("://")
        results = {
            "orbitvault_rest": run_target(
                "orbitvault", f"rest:{scheme}://bench:{token}@{host}/bench/", tree, work, env, size
            ),
            "restic_local": run_target("local", str(work / "local-repo"), tree, work, env, size),
        }
        rss = peak_rss_mib(proc.pid)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ov, loc = results["orbitvault_rest"], results["restic_local"]
    report = {
        "machine": common.machine(),
        "restic": version,
        "tree_bytes": size,
        "tree_files": files,
        "nodes": args.nodes,
        "gateway_rest_peak_rss_mib": round(rss, 1),
        **{k: {m: round(v, 2) for m, v in r.items()} for k, r in results.items()},
        "backup_ratio": round(ov["backup_mb_s"] / loc["backup_mb_s"], 2),
        "restore_ratio": round(ov["restore_mb_s"] / loc["restore_mb_s"], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}; {version}")
    print(f"tree: {size / 1e6:.1f} MB in {files} files; orbitvault: {args.nodes} node processes on loopback")
    print(f"{'target':<18}{'backup MB/s':>12}{'re-backup s':>13}{'restore MB/s':>14}")
    for name, r in (("orbitvault REST", ov), ("restic local", loc)):
        print(f"{name:<18}{r['backup_mb_s']:>12.1f}{r['rebackup_s']:>13.2f}{r['restore_mb_s']:>14.1f}")
    print(f"orbitvault/local: backup {report['backup_ratio']}x, restore {report['restore_ratio']}x")
    print(f"gateway+REST process peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
