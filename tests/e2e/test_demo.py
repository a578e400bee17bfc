"""`orbitvault erasure-demo` (the erasure layer on a real file) through the real console script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "orbitvault"]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, "erasure-demo", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    return path


def test_demo_recovers_and_verifies(sample: Path, tmp_path: Path) -> None:
    work = tmp_path / "shards"
    result = run_demo(str(sample), "-k", "4", "-m", "2", "--workdir", str(work))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: byte-identical" in result.stdout
    found, hit = map(int, re.search(r"damaged fragments found / hit\W+(\d+) / (\d+)", result.stdout).groups())
    assert found == hit > 0
    repaired, hit = map(int, re.search(r"headers repaired / hit\W+(\d+) / (\d+)", result.stdout).groups())
    assert repaired == hit == 3
    assert len(list(work.glob("shard-*.rows"))) == 6
    assert "Traceback" not in result.stderr


def test_demo_reports_unrecoverable_rows_exactly(sample: Path) -> None:
    result = run_demo(str(sample), "-k", "4", "-m", "2", "--flips", "400", "--rounds", "1")
    assert result.returncode == 1
    assert "unrecoverable (more than m=2 damaged fragments), as (stripe, row)" in result.stdout
    assert "bytes lost:" in result.stdout
    assert "verification failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_rejects_bad_geometry(sample: Path) -> None:
    result = run_demo(str(sample), "-k", "30", "-m", "4")
    assert result.returncode != 0
    assert "at most 32 fragments" in result.stderr
    assert "Traceback" not in result.stderr
