"""`orbitvault demo PATH`: the disaster-recovery drill through the real CLI, on a small tree.

One run (about 15 s): a local constellation in scheduled mode on a simulated clock, backup, uplink
until DURABLE, radiation, a satellite lost, the ground site lost and rebuilt from orbit, restore by
downlink, verification. The report's counts must add up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

from orbitvault.client.sample_tree import make_sample_tree
from tests.e2e.test_constellation import our_processes

CLI = [sys.executable, "-m", "orbitvault", "demo"]


def test_drill_on_a_small_tree(tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src", seed=7, scale=0.3).root
    state = tmp_path / "drill"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORBITVAULT_")} | {"COLUMNS": "200"}
    try:
        r = subprocess.run(
            [*CLI, str(src), "--state-dir", str(state), "--json", "--acceleration", "10", "--timeout", "60"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
    finally:
        for pid in our_processes(state):  # never leak a process, whatever happened
            os.kill(pid, signal.SIGKILL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((state / "report.json").read_text())
    assert report["verified"] and report["exit_code"] == 0 and "error" not in report
    assert [s["ok"] for s in report["steps"]] == [True] * 13

    v = report["verification"]
    assert v["verified"] and v["mismatches"] == 0
    assert v["files"] > 20 and v["symlinks"] == 1 and v["hardlink_groups"] == 1

    rad = report["radiation"]
    assert rad["bits_flipped"] > 0 and rad["bits_flipped"] >= rad["damaged_units"] > 0
    assert rad["found"] == rad["damaged_units"]  # every flipped row or header found ...
    assert rad["repaired"] == rad["found"] and rad["unrecoverable"] == 0  # ... and repaired
    assert rad["repaired"] == rad["repaired_in_place"] + rad["repaired_from_peers"]

    lost = report["satellite_lost"]
    assert lost["shards_held"] > 0 and lost["shards_rebuilt"] > 0

    b = report["bytes"]
    assert b["backed_up"] == report["source"]["bytes"] > 0
    assert b["uplinked"] >= b["repository"] * 7 / 4  # 4+3: every byte goes up as k+m fragments
    assert b["stored_in_orbit"] > b["repository"] and b["downlinked"] > 0

    rpo, rto = report["rpo"], report["rto"]
    assert rpo["achieved_s"] > 0 and rpo["predicted_s"] is not None
    # The promise held. It may be beaten: a plan made later, from where the shards really went,
    # can find an earlier pass than the greedy plan made when the backup ended (one pass early
    # in about one run in five under heavy load).
    assert rpo["achieved_s"] <= rpo["predicted_s"] + 1
    assert [p["phase"] for p in rto["phases"]] == ["metadata", "trees", "data"]
    assert all(p["pending"] > 0 for p in rto["phases"])  # after the site loss everything came down
    assert rto["achieved_s"] > 0 and abs(rto["achieved_s"] - rto["predicted_s"]) <= 1

    rebuild = report["ground_site"]["rebuild"]
    assert rebuild["nodes_listed"] == 7 and rebuild["nodes_unreachable"] == 0 and rebuild["objects"] > 0

    svg = (state / "timeline.svg").read_text()
    labels = {t.firstChild.data for t in xml.dom.minidom.parseString(svg).getElementsByTagName("text") if t.firstChild}
    assert {"ground site lost", "gateway rebuilt from orbit", "backup DURABLE", "fault", "repair"} <= labels
    assert "restore downlink" in labels and "transfer" in labels
    # The run said where it put its outputs, and the restore is there.
    assert str(state / "report.json") in r.stderr and str(state / "timeline.svg") in r.stderr
    assert (state / "restored" / src.relative_to("/") / "latest.csv").is_symlink()
