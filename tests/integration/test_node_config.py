"""Node configuration (file < environment < flags) and the `orbitvault node serve` command's errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.storage.config import NodeConfig, default_data_dir, load_node_config, parse_size

FULL = """
name = "sat-a1"
satellite = "OV-11"
plane = "2"
data_dir = "{data_dir}"
capacity = "100GiB"
listen = "0.0.0.0:7400"
metrics_port = 9400
peers = ["10.0.0.2:7400", "[::1]:7401"]
simulation = true
shutdown_grace_s = 5
max_concurrent_puts = 8

[scrub]
enabled_in_process = true
rate_mb_s = 50
interval_s = 600
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path, FULL.format(data_dir=tmp_path / "d")), env={})
    assert cfg.name == "sat-a1" and cfg.satellite == "OV-11" and cfg.plane == "2"
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.capacity == 100 * 2**30
    assert cfg.listen == "0.0.0.0:7400" and cfg.metrics_port == 9400
    assert cfg.peers == ("10.0.0.2:7400", "[::1]:7401")
    assert cfg.simulation and cfg.shutdown_grace_s == 5 and cfg.max_concurrent_puts == 8
    assert cfg.scrub.enabled_in_process and cfg.scrub.rate_bytes_per_s == 50_000_000 and cfg.scrub.interval_s == 600


def test_defaults() -> None:
    cfg = load_node_config(None, env={}, overrides={"capacity": 10**9})
    assert cfg == NodeConfig(capacity=10**9, data_dir=default_data_dir("node"))
    assert cfg.listen == "127.0.0.1:0" and cfg.metrics_port == 0 and not cfg.scrub.enabled_in_process
    assert "orbitvault" in str(cfg.data_dir)


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, 'capacity = "1GiB"\nname = "a"\nlisten = "127.0.0.1:1"\n[scrub]\nrate_mb_s = 1\n')
    env = {
        "ORBITVAULT_NODE_CAPACITY": "2GiB",
        "ORBITVAULT_NODE_LISTEN": "127.0.0.1:2",
        "ORBITVAULT_NODE_PEERS": "h1:1, h2:2",
        "ORBITVAULT_NODE_SIMULATION": "yes",
        "ORBITVAULT_NODE_SCRUB_RATE_MB_S": "7.5",
        "UNRELATED": "x",
    }
    cfg = load_node_config(path, env=env, overrides={"listen": "127.0.0.1:3", "capacity": None})
    assert cfg.name == "a"
    assert cfg.capacity == 2 * 2**30  # env (the flag was not given)
    assert cfg.listen == "127.0.0.1:3"  # flag
    assert cfg.peers == ("h1:1", "h2:2") and cfg.simulation
    assert cfg.scrub.rate_mb_s == 7.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("100GiB", 100 * 2**30),
        ("1.5 TB", 1_500_000_000_000),
        ("64kib", 65536),
        ("2MB", 2_000_000),
    ],
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ('capacity = "100 parsecs"', {}, ["capacity", "node.toml", "GiB"]),
        ("capacity = -5", {}, ["capacity", "positive"]),
        ("capacity = 0", {}, ["capacity", "positive"]),
        ("name = 'x'", {}, ["capacity is required"]),
        ("capacity = 1000\ncapacty = 5", {}, ["capacty", "unknown"]),
        ("capacity = 1000\n[scrub]\nrate = 5", {}, ["scrub.rate", "unknown"]),
        ("capacity = 1000\nscrub = 5", {}, ["scrub", "table"]),
        ('capacity = 1000\nlisten = "localhost"', {}, ["listen", "host:port"]),
        ('capacity = 1000\nlisten = "::1:80"', {}, ["listen", "brackets"]),
        ('capacity = 1000\nlisten = "h:70000"', {}, ["listen", "port"]),
        ('capacity = 1000\npeers = ["h:0"]', {}, ["peers", "port"]),
        ("capacity = 1000\nmetrics_port = 'x'", {}, ["metrics_port", "integer"]),
        ("capacity = 1000\nsimulation = 'maybe'", {}, ["simulation", "true or false"]),
        ("capacity = 1000\n[scrub]\ninterval_s = 0", {}, ["scrub.interval_s", "greater than"]),
        ("capacity = 1000\n[scrub]\nrate_mb_s = -1", {}, ["scrub.rate_mb_s", "at least"]),
        ("capacity = 1000\nname = 'a/b'", {}, ["name", "separators"]),
        ("capacity = 1000\nname = '" + "n" * 65 + "'", {}, ["name", "64"]),
        ("capacity = 1000\nmax_concurrent_puts = 0", {}, ["max_concurrent_puts"]),
        ("capacity = [", {}, ["not valid TOML"]),
        ("capacity = 1000", {"ORBITVAULT_NODE_CAPACITY": "lots"}, ["ORBITVAULT_NODE_CAPACITY"]),
        ("capacity = 1000", {"ORBITVAULT_NODE_LISTN": "h:1"}, ["ORBITVAULT_NODE_LISTN", "unknown"]),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_node_config(write(tmp_path, text), env=env)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read node config"):
        load_node_config(tmp_path / "nope.toml", env={})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitvault", "node", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    result = _cli("--data-dir", str(tmp_path / "d"), "--capacity", "lots")
    assert result.returncode == 1
    assert "capacity" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_reports_a_busy_port_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _cli(
            "--data-dir", str(tmp_path / "d"), "--capacity", "1GiB", "--listen", f"127.0.0.1:{port}", "--insecure"
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
