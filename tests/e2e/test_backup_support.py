"""Helpers for the backup e2e tests: run the real CLI, build trees, compare trees with metadata.

Repositories here use small chunks (16/64/256 KiB), 512 KiB packs and a cheap Argon2id, through
init's hidden test options, so every test stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

TEST_INIT = [
    "--kdf-time=1",
    "--kdf-memory=1024",
    "--kdf-parallelism=1",
    "--chunker-min=16384",
    "--chunker-avg=65536",
    "--chunker-max=262144",
    "--pack-size=524288",
]
PASSWORD = "correct horse battery staple"


class OV:
    """One repository and the CLI run against it."""

    def __init__(self, repo: Path, password: str = PASSWORD) -> None:
        self.repo = repo
        self.env = {
            **os.environ,
            "ORBITVAULT_REPOSITORY": f"local:{repo}",
            "ORBITVAULT_PASSWORD": password,
            "PYTHONUNBUFFERED": "1",
        }

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "orbitvault", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"orbitvault {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "orbitvault", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def json(self, *args: str, **kw: Any) -> Any:
        out = self.run(*args, "--json", **kw).stdout.strip().splitlines()
        return json.loads(out[-1])

    def json_lines(self, *args: str) -> list[Any]:
        return [json.loads(line) for line in self.run(*args, "--json").stdout.splitlines() if line.strip()]

    def init(self) -> None:
        self.run("init", *TEST_INIT)

    def packs(self) -> set[str]:
        return {p.name for p in (self.repo / "data").glob("*/*") if not p.name.startswith(".")}


def write(path: Path, data: bytes, mtime: float | None = None, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def manifest(root: Path) -> dict[str, dict[str, Any]]:
    """Everything restore must reproduce, per relative path (directories' atimes excluded)."""
    out: dict[str, dict[str, Any]] = {}
    first_by_inode: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            d: dict[str, Any] = {
                "mode": stat.filemode(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
            }
            try:
                d["xattrs"] = sorted(
                    (n, os.getxattr(p, n, follow_symlinks=False))
                    for n in os.listxattr(p, follow_symlinks=False)
                    if n.startswith("user.")
                )
            except OSError:
                d["xattrs"] = []
            if stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                d["size"] = st.st_size
                d["sha256"] = hashlib.sha256(_read_noatime(p)).hexdigest()
                if st.st_nlink > 1:
                    d["link_group"] = first_by_inode.setdefault((st.st_dev, st.st_ino), rel)
            out[rel] = d
    return out


def _read_noatime(p: Path) -> bytes:
    """Read without touching atime (where permitted), so reading does not change what a backup sees."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(p, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def restored_root(target: Path, src: Path) -> Path:
    """restore recreates the absolute source path below the target."""
    return target / src.resolve().relative_to("/")


def test_support_manifest_sees_metadata(tmp_path: Path) -> None:
    f = write(tmp_path / "a", b"x", mtime=1_000_000, mode=0o640)
    os.link(f, tmp_path / "b")
    m = manifest(tmp_path)
    assert m["a"]["mode"] == "-rw-r-----" and m["a"]["mtime_ns"] == 1_000_000 * 10**9
    assert m["b"]["link_group"] == "a"
