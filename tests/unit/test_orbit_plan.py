"""Contact plans: built from the model, ION and HDTN round trips, line-numbered errors, SVG."""

from __future__ import annotations

import json
import xml.dom.minidom

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.model import Constellation, NodeMap
from orbitvault.orbit.plan import Contact, ContactPlan, read_plan, write_plan
from orbitvault.orbit.timeline import Marker, Transfer, render_timeline
from orbitvault.orbit.walker import SAMPLE_EPOCH

T0 = SAMPLE_EPOCH + 20 * 86400


@pytest.fixture(scope="module")
def sample() -> Constellation:
    return load_constellation()


@pytest.fixture(scope="module")
def plan(sample: Constellation) -> ContactPlan:
    return ContactPlan.from_model(sample, T0, T0 + 6 * 3600)


def test_plan_from_model(sample: Constellation, plan: ContactPlan) -> None:
    stations = {s.name for s in sample.stations}
    up = [c for c in plan.contacts if c.source in stations]
    down = [c for c in plan.contacts if c.dest in stations]
    isl = [c for c in plan.contacts if c.source not in stations and c.dest not in stations]
    assert up and down and isl
    assert len(up) == len(down)
    for c in plan.contacts:
        assert c.start == int(c.start) and c.end == int(c.end)  # whole seconds
        assert c.owlt == 1.0  # LEO: milliseconds, rounded up to the second the formats carry
    wallops = sample.station("Wallops")
    assert {c.rate for c in up if c.source == "Wallops"} == {wallops.uplink_rate}
    assert {c.rate for c in down if c.dest == "Wallops"} == {wallops.downlink_rate}
    assert {c.rate for c in isl} == {sample.isl.rate}
    assert plan.epoch == T0
    assert plan.nodes.number("Redu") == 1 and plan.nodes.number("OV-24") == 24
    assert plan.contacts == sorted(plan.contacts)


def test_ion_round_trip(plan: ContactPlan) -> None:
    text = plan.to_ion()
    assert "# orbitvault node 2 Wallops" in text
    back = ContactPlan.from_ion(text)
    assert back == plan
    assert back.to_ion() == text


def test_hdtn_round_trip_and_units(plan: ContactPlan) -> None:
    text = plan.to_hdtn()
    doc = json.loads(text)
    first = doc["contacts"][0]
    assert set(first) == {"contact", "source", "dest", "startTime", "endTime", "rateBitsPerSec", "owlt"}
    c0 = plan.contacts[0]
    assert first["rateBitsPerSec"] == c0.rate * 8  # bits on the wire format, bytes in the model
    assert first["startTime"] == c0.start - T0
    assert [c["contact"] for c in doc["contacts"]] == list(range(len(plan.contacts)))
    back = ContactPlan.from_hdtn(text)
    assert back == plan
    assert back.to_hdtn() == text


def test_ion_hdtn_model_chain_is_lossless(plan: ContactPlan) -> None:
    ion = plan.to_ion()
    hdtn = ContactPlan.from_ion(ion).to_hdtn()
    assert ContactPlan.from_hdtn(hdtn).to_ion() == ion
    assert ContactPlan.from_ion(ContactPlan.from_hdtn(hdtn).to_ion()) == plan


def test_foreign_ion_file_relative_times_and_ranges() -> None:
    text = """
# a hand-written ION plan: relative times, no orbitvault names
a contact +0 +600 1 2 125000
a contact +0 +600 2 1 125000 0.5
a contact +1000 +1300 2 3 1000
a range +0 +3600 2 1 3
"""
    epoch = 1_800_000_000.0
    with pytest.raises(InvalidArgument, match=r"line 3: relative time \+0 needs an epoch"):
        ContactPlan.from_ion(text)
    cp = ContactPlan.from_ion(text, epoch=epoch)
    assert [(c.source, c.dest, c.start - epoch, c.end - epoch) for c in cp.contacts] == [
        ("1", "2", 0, 600),
        ("2", "1", 0, 600),
        ("2", "3", 1000, 1300),
    ]
    assert [c.owlt for c in cp.contacts] == [3.0, 3.0, 0.0]  # a range applies both ways; none: 0
    assert cp.contacts[1].confidence == 0.5
    again = ContactPlan.from_ion(cp.to_ion())
    assert again == cp
    assert "a contact 2027/01/15-08:00:00 2027/01/15-08:10:00 2 1 125000 0.5" in cp.to_ion()
    # HDTN cannot carry confidence; everything else survives.
    hd = ContactPlan.from_hdtn(cp.to_hdtn())
    assert [(c.source, c.dest, c.start, c.end, c.rate, c.owlt) for c in hd.contacts] == [
        (c.source, c.dest, c.start, c.end, c.rate, c.owlt) for c in cp.contacts
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a contact +0 +60 1 2", "expected 'a contact"),
        ("a range +0 +60 1 2", "expected 'a range"),
        ("a contact +0 +60 1 two 100", "node number 'two'"),
        ("a contact +0 +60 0 2 100", "node number '0'"),
        ("a contact +60 +0 1 2 100", "not after start"),
        ("a contact 2026/13/01-00:00:00 +60 1 2 100", "invalid date"),
        ("a contact yesterday +60 1 2 100", "neither"),
        ("a contact +0 +60 1 2 fast", "rate 'fast' is not a number"),
        ("a contact +0 +60 1 2 -5", "non-negative"),
        ("a contact +0 +60 1 2 100 1.5", "confidence"),
        ("a range +0 +60 1 2 soon", "owlt"),
        ("s", "unsupported command"),
        ("a span +0 +60 1 2 100", "unsupported command"),
        ("# orbitvault node 7", "orbitvault node <number> <name>"),
    ],
)
def test_malformed_ion_lines_name_their_line(line: str, message: str) -> None:
    text = f"# orbitvault epoch 2026-11-21T00:00:00Z\na contact +0 +60 1 2 100\n\n{line}\n"
    with pytest.raises(InvalidArgument, match=r"plan.rc line 4: .*") as err:
        ContactPlan.from_ion(text, source="plan.rc")
    assert message in str(err.value)


def test_malformed_hdtn() -> None:
    with pytest.raises(InvalidArgument, match="line 3 column"):
        ContactPlan.from_hdtn('{\n "contacts": [\n  {oops}\n ]\n}', epoch=0)
    with pytest.raises(InvalidArgument, match="'contacts' list"):
        ContactPlan.from_hdtn('{"contact": []}', epoch=0)
    with pytest.raises(InvalidArgument, match="relative"):
        ContactPlan.from_hdtn('{"contacts": []}')
    good = {"contact": 0, "source": 1, "dest": 2, "startTime": 0, "endTime": 10, "rateBitsPerSec": 8, "owlt": 1}
    for bad, message in (
        ({"endTime": 0}, "not after"),
        ({"rateBitsPerSec": -8}, "non-negative"),
        ({"source": "one"}, "integer"),
        ({"dest": 0}, "positive"),
    ):
        doc = {"contacts": [good, {**good, **bad}]}
        with pytest.raises(InvalidArgument, match=rf"contacts\[1\]: .*{message}"):
            ContactPlan.from_hdtn(json.dumps(doc), epoch=0)
    doc = {"contacts": [{k: v for k, v in good.items() if k != "dest"}]}
    with pytest.raises(InvalidArgument, match="missing dest"):
        ContactPlan.from_hdtn(json.dumps(doc), epoch=0)
    # Rates need not be whole bytes in HDTN; the model keeps the fraction.
    cp = ContactPlan.from_hdtn(json.dumps({"contacts": [{**good, "rateBitsPerSec": 12}]}), epoch=0)
    assert cp.contacts[0].rate == 1.5


def test_contact_and_node_map_validation() -> None:
    with pytest.raises(InvalidArgument):
        Contact(10, 10, "a", "b", 1.0)
    with pytest.raises(InvalidArgument):
        Contact(0, 10, "a", "b", -1.0)
    nodes = NodeMap({"Redu": 1})
    with pytest.raises(InvalidArgument, match="used by both"):
        nodes.add("Other", 1)
    with pytest.raises(InvalidArgument, match="two numbers"):
        nodes.add("Redu", 2)
    with pytest.raises(InvalidArgument, match="node name"):
        nodes.add("has space", 3)
    assert nodes.name(9) == "9" and nodes.number("9") == 9
    with pytest.raises(InvalidArgument, match="no number"):
        ContactPlan([Contact(0, 10, "Redu", "Unknown", 1.0)], nodes, 0).to_ion()


def test_files_and_clipping(tmp_path, plan: ContactPlan) -> None:  # type: ignore[no-untyped-def]
    write_plan(plan, tmp_path / "plan.rc", "ion")
    write_plan(plan, tmp_path / "plan.json", "hdtn")
    assert read_plan(tmp_path / "plan.rc") == plan
    assert read_plan(tmp_path / "plan.json") == plan
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_plan(tmp_path / "missing.rc")
    with pytest.raises(InvalidArgument, match="format"):
        write_plan(plan, tmp_path / "x", "csv")
    first = plan.contacts[0]
    part = plan.within(first.start + 10, first.start + 20)
    assert all(c.start >= first.start + 10 and c.end <= first.start + 20 for c in part.contacts)
    assert part.contacts


def test_timeline_svg(sample: Constellation, plan: ContactPlan) -> None:
    up = next(c for c in plan.contacts if c.source == "Wallops")
    transfer = Transfer("Wallops", up.dest, up.start + 5, up.end - 5, "shard 1/14")
    svg = render_timeline(plan, stations={s.name for s in sample.stations}, transfers=[transfer], title="sample <day>")
    doc = xml.dom.minidom.parseString(svg)  # well-formed
    labels = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
    for name in ("Redu", "Wallops", "Hartebeesthoek", "OV-11", "OV-24"):
        assert name in labels
    assert labels.index("Redu") < labels.index("OV-11")  # stations first
    assert "sample <day>" in labels  # escaped in the file, intact once parsed
    assert "#1f9d55" in svg and "#e08a2c" in svg and "#3b7dd8" in svg
    assert "shard 1/14" in svg


def test_timeline_markers_and_restore_transfers(sample: Constellation, plan: ContactPlan) -> None:
    down = next(c for c in plan.contacts if c.dest == "Redu")
    t0 = plan.contacts[0].start
    markers = [
        Marker(t0 + 600, "bit flip", row="OV-12", kind="fault"),
        Marker(t0 + 900, "ground site lost", kind="fault"),
        Marker(t0 + 905, "gateway rebuilt", kind="repair"),  # next to the previous: its label goes below
        Marker(t0 - 10**6, "long before", kind="event"),  # outside the span: not drawn
    ]
    svg = render_timeline(
        plan,
        stations={s.name for s in sample.stations},
        transfers=[Transfer(down.source, "Redu", down.start, down.start + 1, "pack", restore=True)],
        markers=markers,
        start=t0,
        end=t0 + 6 * 3600,
    )
    doc = xml.dom.minidom.parseString(svg)
    texts = {t.firstChild.data: t for t in doc.getElementsByTagName("text") if t.firstChild}
    assert {"ground site lost", "gateway rebuilt", "restore downlink", "fault", "repair"} <= set(texts)
    assert "long before" not in svg
    assert texts["ground site lost"].getAttribute("y") != texts["gateway rebuilt"].getAttribute("y")
    assert "#8e44ad" in svg and "#d62728" in svg and svg.count("<path") == 1  # one on-row marker
    with pytest.raises(InvalidArgument, match="marker kind"):
        render_timeline(plan, markers=[Marker(t0, "x", kind="boom")])
