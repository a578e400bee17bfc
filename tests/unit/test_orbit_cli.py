"""`orbitvault orbit passes|plan` through click's CliRunner."""

from __future__ import annotations

import json
import xml.dom.minidom
from pathlib import Path

from click.testing import CliRunner

from orbitvault.cli import cli
from orbitvault.orbit.plan import ContactPlan, read_plan

SPAN = ["--start", "2026-11-21T00:00:00Z", "--duration", "6h"]


def test_passes_table() -> None:
    result = CliRunner().invoke(cli, ["orbit", "passes", *SPAN])
    assert result.exit_code == 0, result.output
    for word in ("Wallops", "Redu", "Hartebeesthoek", "OV-11", "Per station", "Max el"):
        assert word in result.output


def test_passes_json_and_svg(tmp_path: Path) -> None:
    svg = tmp_path / "passes.svg"
    result = CliRunner().invoke(cli, ["orbit", "passes", *SPAN, "--station", "Wallops", "--json", "--svg", str(svg)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["passes"] and {p["station"] for p in doc["passes"]} == {"Wallops"}
    assert doc["summary"][0]["station"] == "Wallops"
    assert doc["passes"][0]["aos"].startswith("2026-11-21T")
    xml.dom.minidom.parse(str(svg))


def test_plan_writes_ion_hdtn_svg_and_reads_them_back(tmp_path: Path) -> None:
    ion, hdtn, svg = tmp_path / "plan.rc", tmp_path / "plan.json", tmp_path / "plan.svg"
    result = CliRunner().invoke(
        cli, ["orbit", "plan", *SPAN, "--ion", str(ion), "--hdtn", str(hdtn), "--svg", str(svg)]
    )
    assert result.exit_code == 0, result.output
    assert "ISL" in result.output and "uplink" in result.output
    assert read_plan(ion) == read_plan(hdtn)
    assert "a contact 2026/11/21-" in ion.read_text()
    xml.dom.minidom.parse(str(svg))

    # Convert HDTN back to ION through the CLI: identical to the ION written directly.
    ion2 = tmp_path / "again.rc"
    result = CliRunner().invoke(cli, ["orbit", "plan", "--input", str(hdtn), "--ion", str(ion2)])
    assert result.exit_code == 0, result.output
    assert ion2.read_text() == ion.read_text()

    result = CliRunner().invoke(cli, ["orbit", "plan", "--input", str(ion), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert len(doc["contacts"]) == len(read_plan(ion).contacts)


def test_plan_without_isl() -> None:
    result = CliRunner().invoke(cli, ["orbit", "plan", *SPAN, "--no-isl", "--json"])
    assert result.exit_code == 0, result.output
    cp = json.loads(result.output)
    stations = {"Redu", "Wallops", "Hartebeesthoek"}
    assert all(c["source"] in stations or c["dest"] in stations for c in cp["contacts"])


def test_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in (
        (["orbit", "passes", "--start", "yesterday-ish"], "cannot parse time"),
        (["orbit", "passes", "--duration", "-3h"], "cannot parse duration"),
        (["orbit", "passes", "--config", str(tmp_path / "none.toml")], "cannot read constellation config"),
        (["orbit", "passes", *SPAN, "--station", "Nowhere"], "no station 'Nowhere'"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)

    bad = tmp_path / "bad.rc"
    bad.write_text("a contact +0 +60 1 2 100\n")
    result = runner.invoke(cli, ["orbit", "plan", "--input", str(bad)])
    assert result.exit_code == 1
    assert "line 1: relative time +0 needs an epoch" in result.output
    result = runner.invoke(cli, ["orbit", "plan", "--input", str(bad), "--epoch", "2026-11-21T00:00Z", "--json"])
    assert result.exit_code == 0, result.output
    assert ContactPlan.from_ion(bad.read_text(), epoch=0).contacts[0].rate == 100
