"""`orbitvault orbit plan --backlog/--restore`: RPO/RTO next to the capacity bound, transfers in the SVG."""

from __future__ import annotations

import json
import xml.dom.minidom
from pathlib import Path

from click.testing import CliRunner

from orbitvault.cli import cli

SPAN = ["--start", "2026-11-21T00:00:00Z", "--duration", "1d"]


def test_plan_predicts_backlog_and_restore(tmp_path: Path) -> None:
    svg = tmp_path / "plan.svg"
    args = ["orbit", "plan", *SPAN, "--backlog", "500GiB", "--restore", "100GiB", "--svg", str(svg)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "backlog DURABLE" in result.output and "restore complete" in result.output
    assert "Capacity bound" in result.output and "4+2" in result.output
    doc = xml.dom.minidom.parse(str(svg))
    assert any("uplink" in (t.firstChild.data if t.firstChild else "") for t in doc.getElementsByTagName("title"))

    result = CliRunner().invoke(cli, ["orbit", "plan", *SPAN, "--backlog", "2TiB", "--storage-class", "2+1", "--json"])
    assert result.exit_code == 0, result.output
    (p,) = json.loads(result.output)["predictions"]
    assert p["storage_class"] == "2+1" and p["link_bytes"] >= 2 * 2**40 * 3 // 2
    assert p["done_unix"] >= p["capacity_bound_unix"] and 1.0 <= p["ratio"] <= 1.2


def test_plan_backlog_beyond_the_span_and_bad_options() -> None:
    result = CliRunner().invoke(cli, ["orbit", "plan", *SPAN, "--no-isl", "--backlog", "1PB"])
    assert result.exit_code == 0, result.output
    assert "not by" in result.output
    result = CliRunner().invoke(cli, ["orbit", "plan", *SPAN, "--backlog", "1GiB", "--storage-class", "four"])
    assert result.exit_code != 0 and "k+m" in result.output
    result = CliRunner().invoke(cli, ["orbit", "plan", *SPAN, "--backlog", "lots"])
    assert result.exit_code != 0 and "--backlog" in result.output
