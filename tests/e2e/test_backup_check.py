"""check finds damaged and missing packs and names them; exit codes for wrong password / no repo."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.test_backup_support import OV, write


def _repo_with_data(tmp_path: Path) -> OV:
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"f{i}", os.urandom(600_000))
    ov = OV(tmp_path / "repo")
    ov.init()
    ov.run("backup", str(src))
    return ov


def _data_packs(ov: OV) -> list[Path]:
    return sorted(p for p in (ov.repo / "data").glob("*/*") if p.stat().st_size > 100_000)


def test_read_data_names_a_corrupted_pack(tmp_path: Path) -> None:
    ov = _repo_with_data(tmp_path)
    assert ov.json("check", "--read-data")["num_errors"] == 0
    victim = _data_packs(ov)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit flip in the middle of a blob
    victim.chmod(0o600)
    victim.write_bytes(bytes(data))

    # The structure is intact: a plain check does not read data.
    assert ov.run("check").returncode == 0
    p = ov.run("check", "--read-data", check=False)
    assert p.returncode == 1
    assert f"pack {victim.name}" in p.stderr and "damaged" in p.stderr
    p = ov.run("check", "--read-data-subset", "100%", check=False)
    assert p.returncode == 1 and victim.name in p.stderr
    res = ov.json("check", "--read-data", check=False)
    assert res["num_errors"] >= 1 and all(victim.name in e for e in res["errors"])


def test_check_names_a_missing_pack(tmp_path: Path) -> None:
    ov = _repo_with_data(tmp_path)
    victim = _data_packs(ov)[-1]
    victim.unlink()
    p = ov.run("check", check=False)
    assert p.returncode == 1
    assert f"pack {victim.name}: missing" in p.stderr
    assert "not in the index" not in p.stderr or victim.name in p.stderr


def test_read_data_subset_forms(tmp_path: Path) -> None:
    ov = _repo_with_data(tmp_path)
    total = len(list((ov.repo / "data").glob("*/*")))
    parts = [ov.json("check", "--read-data-subset", f"{n}/3")["packs_read"] for n in (1, 2, 3)]
    assert sum(parts) == total
    assert ov.json("check", "--read-data-subset", "50%")["packs_read"] == round(total / 2) or total < 2
    assert ov.json("check", "--read-data-subset", "1K")["packs_read"] == 1


def test_wrong_password_exits_12_and_no_repository_exits_10(tmp_path: Path) -> None:
    ov = _repo_with_data(tmp_path)
    p = ov.run("snapshots", check=False, env={"ORBITVAULT_PASSWORD": "wrong"})
    assert p.returncode == 12, p.stderr
    assert "wrong password" in p.stderr
    p = ov.run("snapshots", "--json", check=False, env={"ORBITVAULT_PASSWORD": "wrong"})
    assert p.returncode == 12 and '"code": 12' in p.stderr
    p = ov.run("snapshots", "-r", f"local:{tmp_path / 'nothing-here'}", check=False)
    assert p.returncode == 10, p.stderr
    p = ov.run("snapshots", "-r", "orbit://localhost:7000/bucket", check=False, env={"ORBITVAULT_API_KEY": ""})
    assert p.returncode == 1 and "needs an API key" in p.stderr


def test_password_file_and_command(tmp_path: Path) -> None:
    ov = _repo_with_data(tmp_path)
    pwfile = tmp_path / "pw"
    pwfile.write_text(ov.env["ORBITVAULT_PASSWORD"] + "\n")
    env = {k: v for k, v in ov.env.items() if k != "ORBITVAULT_PASSWORD"}
    ov.env = env
    assert len(ov.json("snapshots", "--password-file", str(pwfile))) == 1
    assert len(ov.json("snapshots", "--password-command", f"cat {pwfile}")) == 1
    p = ov.run("snapshots", check=False)  # no password and no terminal
    assert p.returncode == 1 and "no password" in p.stderr
