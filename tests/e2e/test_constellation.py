"""`orbitvault constellation up|status|down` through the real CLI: real processes on loopback.

Every test uses its own state dir under tmp_path and a small capacity; a finalizer runs `down`
whatever happens, and the tests check that no process of theirs outlives a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbitvault.ground.constellation import default_client_settings, sample_dir

CLI = [sys.executable, "-m", "orbitvault", "constellation"]
SATELLITES = ["OV-11", "OV-12", "OV-13", "OV-14", "OV-21", "OV-22", "OV-23", "OV-24"]


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORBITVAULT_CONSTELLATION_DIR"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def write_config(path: Path, *, gateway_port: int = 0) -> Path:
    path.write_text(
        f"""
orbit = "{sample_dir() / "sample.toml"}"
start_timeout_s = 30.0
stop_timeout_s = 10.0
[nodes]
capacity = "16MiB"
[scrub]
interval_s = 5.0
[gateway]
port = {gateway_port}
storage_class = "4+2"
""",
        encoding="utf-8",
    )
    return path


def our_processes(state_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names the state dir: ours, nobody else's."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(state_dir) in cmdline and state not in ("Z", "X"):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    yield d
    run("down", "--state-dir", str(d), "--timeout", "5")
    for pid in our_processes(d):  # belt and braces: never leak a process into the next test
        os.kill(pid, signal.SIGKILL)


def status(state_dir: Path) -> dict:
    r = run("status", "--state-dir", str(state_dir), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_up_status_refuse_kill_down(tmp_path: Path, state_dir: Path) -> None:
    config = write_config(tmp_path / "constellation.toml")
    t0 = time.monotonic()
    r = run("up", "--config", str(config), "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "orbit://127.0.0.1:" in r.stdout and "mutual TLS" in r.stdout
    assert time.monotonic() - t0 < 30

    st = status(state_dir)
    assert st["running"] and st["tls"]
    assert [n["name"] for n in st["nodes"]] == SATELLITES
    assert all(n["up"] for n in st["nodes"]), st["nodes"]
    assert {n["plane"] for n in st["nodes"]} == {"1", "2"}
    node = st["nodes"][0]
    assert node["satellite"] == "OV-11"
    assert node["info"]["capacity_bytes"] == 16 * 2**20
    assert "passes_completed" in node["info"]["scrub"]
    assert all(n["next_contact"] is not None for n in st["nodes"])  # every satellite passes within a day
    gw = st["gateway"]
    assert gw["up"] and gw["info"]["nodes_known"] == 8
    assert gw["info"]["shards_missing"] == 0

    # The backup client's default: the running constellation's repository, key and TLS files.
    settings = default_client_settings(state_dir)
    assert settings is not None
    assert settings.repository == st["repository"] == f"orbit://{gw['address']}/backups"
    assert settings.api_key.startswith("ovk_") and settings.tls_cert is not None and settings.tls_cert.exists()
    assert (state_dir / "client.toml").stat().st_mode & 0o777 == 0o600
    assert (state_dir / "master.key").stat().st_mode & 0o777 == 0o600

    human = run("status", "--state-dir", str(state_dir))
    assert human.returncode == 0 and "8/8 nodes up" in human.stdout

    again = run("up", "--config", str(config), "--state-dir", str(state_dir))
    assert again.returncode != 0
    assert "already running" in again.stderr and "constellation down" in again.stderr
    assert "Traceback" not in again.stderr
    assert status(state_dir)["gateway"]["pid"] == gw["pid"]  # the refusal touched nothing

    victim = next(n for n in st["nodes"] if n["name"] == "OV-12")
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        st = status(state_dir)
        down = [n["name"] for n in st["nodes"] if not n["up"]]
        if down == ["OV-12"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert down == ["OV-12"]
    assert st["running"] and st["gateway"]["up"]
    human = run("status", "--state-dir", str(state_dir))
    assert "7/8 nodes up" in human.stdout and "down" in human.stdout

    r = run("down", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    assert "stopped 8 process(es)" in r.stdout
    assert our_processes(state_dir) == []
    assert list((state_dir / "run").iterdir()) == []
    assert default_client_settings(state_dir) is None

    st = status(state_dir)
    assert not st["running"]
    human = run("status", "--state-dir", str(state_dir))
    assert "not running" in human.stdout
    r = run("down", "--state-dir", str(state_dir))  # idempotent
    assert r.returncode == 0 and "not running" in r.stdout

    r = run("down", "--state-dir", str(state_dir), "--purge")
    assert r.returncode == 0 and not state_dir.exists()


def test_port_taken_is_named_and_nothing_runs(tmp_path: Path, state_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path / "constellation.toml", gateway_port=port)
        r = run("up", "--config", str(config), "--state-dir", str(state_dir))
    assert r.returncode != 0
    assert f"port {port}" in r.stderr and "gateway" in r.stderr and "already in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert our_processes(state_dir) == []
    assert not status(state_dir)["running"]


def test_process_dying_at_start_shows_its_log_and_stops_the_rest(tmp_path: Path, state_dir: Path) -> None:
    config = write_config(tmp_path / "constellation.toml")
    (state_dir / "data").mkdir(parents=True)
    (state_dir / "data" / "OV-13").write_text("not a directory")  # the node cannot open its store
    r = run("up", "--config", str(config), "--state-dir", str(state_dir))
    assert r.returncode != 0
    assert "node OV-13 exited at start" in r.stderr, r.stderr
    assert "OV-13.log" in r.stderr and "Not a directory" in r.stderr  # the log's last lines
    assert our_processes(state_dir) == []
    assert list((state_dir / "run").iterdir()) == []


def test_backup_client_defaults_to_the_running_constellation(tmp_path: Path, state_dir: Path) -> None:
    """Right after `constellation up`, `orbitvault init && orbitvault backup PATH` need no repository."""
    config = write_config(tmp_path / "constellation.toml")
    up = run("up", "--config", str(config), "--state-dir", str(state_dir), timeout=120)
    assert up.returncode == 0, up.stderr
    src = tmp_path / "src"
    src.mkdir()
    (src / "letter.txt").write_bytes(b"dear orbit\n" * 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_")}
    env.update(
        ORBITVAULT_CONSTELLATION_DIR=str(state_dir), ORBITVAULT_PASSWORD="pw", ORBITVAULT_CACHE_DIR=str(tmp_path)
    )

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI[:-1], *args], capture_output=True, text=True, timeout=120, env=env)

    for args in (("init",), ("backup", str(src)), ("restore", "latest", "--target", str(tmp_path / "out"))):
        r = client(*args)
        assert r.returncode == 0, f"{args}: {r.stderr}"
    assert (tmp_path / "out" / src.relative_to("/") / "letter.txt").read_bytes() == b"dear orbit\n" * 1000
    assert run("down", "--state-dir", str(state_dir)).returncode == 0
    r = client("snapshots")  # nothing running and nothing configured: a clear message, not a traceback
    assert r.returncode != 0 and "constellation up" in r.stderr and "Traceback" not in r.stderr


def test_a_port_taken_between_its_pick_and_its_bind_is_picked_again(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first `up` picks free ports, then starts the processes: another constellation starting
    on the host may bind one in between. That node cannot listen; `up` picks it another port."""
    from orbitvault.cli.constellation import Constellation
    from orbitvault.ground import constellation as dom

    real = dom.start_process
    held: list[tuple[socket.socket, str, str]] = []

    def start(layout: dom.Layout, m: dom.Member, argv: list[str]) -> dom.Started:
        if m.role == "node" and not held:  # someone binds the first node's port just before it starts
            host, _, port = m.address.rpartition(":")
            s = socket.socket()
            s.bind((host, int(port)))
            s.listen()
            held.append((s, m.name, m.address))
        return real(layout, m, argv)

    monkeypatch.setattr(dom, "start_process", start)
    notes: list[str] = []
    try:
        c = Constellation.up(write_config(tmp_path / "constellation.toml"), state_dir, progress=notes.append)
        _sock, name, taken = held[0]
        now = next(m.address for m in c.state.members if m.name == name)
        assert now != taken and any("taken meanwhile" in n for n in notes), notes
        st = status(state_dir)
        assert st["running"] and all(n["up"] for n in st["nodes"]) and st["gateway"]["up"], st
        assert next(n["address"] for n in st["nodes"] if n["name"] == name) == now
        assert st["gateway"]["info"]["nodes_known"] == 8  # the gateway was configured with the new port
    finally:
        for s, _name, _addr in held:
            s.close()
