"""A timeline picture of a contact plan as hand-written SVG (no plotting dependency).

One row per node (stations first, then satellites, in node-number order), one bar per window in
both rows it joins, labelled with the other end when there is room. Ground contacts and
inter-satellite links get different colours; transfers, when given, are drawn as thin strips on
top of their window (restore downlinks in their own colour), and markers (faults, repairs, other
events) as ticks on a row or lines across all rows. Hover a bar for its details (SVG `<title>`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from html import escape

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.plan import ContactPlan
from orbitvault.orbit.timeutil import Timestamp, format_duration, format_time, to_datetime

GROUND_COLOUR = "#3b7dd8"
ISL_COLOUR = "#e08a2c"
TRANSFER_COLOUR = "#1f9d55"
RESTORE_COLOUR = "#8e44ad"
MARKER_COLOURS = {"fault": "#d62728", "repair": "#17becf", "event": "#333333"}
_MARKER_LEGEND = {"fault": "fault", "repair": "repair", "event": "event"}


@dataclass(frozen=True)
class Transfer:
    """Something sent from `source` to `dest` between `start` and `end` (drawn over the windows);
    `restore` ones (downlinks for a restore) get their own colour."""

    source: str
    dest: str
    start: Timestamp
    end: Timestamp
    label: str = ""
    restore: bool = False


@dataclass(frozen=True)
class Marker:
    """An instant worth seeing: on one row (`row`), or across all rows (None). `kind` is
    "fault", "repair" or "event" (its colour and legend entry)."""

    time: Timestamp
    label: str
    row: str | None = None
    kind: str = "event"


def render_timeline(
    plan: ContactPlan,
    *,
    stations: Collection[str] = (),
    transfers: Sequence[Transfer] = (),
    markers: Sequence[Marker] = (),
    start: Timestamp | None = None,
    end: Timestamp | None = None,
    rows: Sequence[str] | None = None,
    title: str = "",
    width: int = 1400,
) -> str:
    """SVG text. `stations` names the ground nodes (for colours and row order)."""
    if start is None:
        start = min((c.start for c in plan.contacts), default=plan.epoch or 0.0)
    if end is None:
        end = max((c.end for c in plan.contacts), default=start + 3600.0)
    if not end > start:
        raise InvalidArgument("timeline end must be after its start")
    names = list(rows) if rows is not None else plan.node_names()
    if rows is None:
        names.sort(key=lambda n: 0 if n in stations else 1)  # stable: stations first
    for t in transfers:
        for n in (t.source, t.dest):
            if n not in names:
                names.append(n)
    for mk in markers:
        if mk.kind not in MARKER_COLOURS:
            raise InvalidArgument(f"marker kind must be one of {', '.join(MARKER_COLOURS)}, got {mk.kind!r}")
        if mk.row is not None and mk.row not in names:
            names.append(mk.row)

    label_w, row_h, top, bottom, pad = 130, 24, 46 if title else 28, 30, 10
    plot_w = max(width - label_w - pad, 200)
    height = top + row_h * len(names) + bottom
    scale = plot_w / (end - start)

    def x(t: Timestamp) -> float:
        return label_w + (min(max(t, start), end) - start) * scale

    row_of = {n: i for i, n in enumerate(names)}
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(f'<text x="{pad}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>')
    for i, n in enumerate(names):
        y = top + i * row_h
        if i % 2 == 0:
            out.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{row_h}" fill="#f4f6f8"/>')
        out.append(f'<text x="{label_w - 6}" y="{y + row_h * 0.65:.1f}" text-anchor="end">{escape(n)}</text>')

    # Time axis: ticks at a round interval giving ~12 labels.
    tick = _tick_interval(end - start)
    first = math.ceil(start / tick) * tick
    axis_y = top + row_h * len(names)
    t = first
    while t <= end:
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{axis_y}" stroke="#d0d4d9"/>')
        label = to_datetime(t).strftime("%H:%M" if tick < 86400 else "%m-%d")
        out.append(f'<text x="{xx:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{label}</text>')
        t += tick
    out.append(
        f'<text x="{label_w}" y="{axis_y + 27}" fill="#555">{format_time(start)} to {format_time(end)} (UTC)</text>'
    )

    # Windows: one bar per undirected window, drawn in both rows.
    seen: set[tuple[str, str, float, float]] = set()
    for c in plan.contacts:
        a, b = sorted((c.source, c.dest))
        key = (a, b, c.start, c.end)
        if key in seen or c.end <= start or c.start >= end:
            continue
        seen.add(key)
        colour = GROUND_COLOUR if a in stations or b in stations else ISL_COLOUR
        tip = f"{a} - {b}: {format_time(c.start)} to {format_time(c.end)} ({format_duration(c.duration)})"
        for me, other in ((a, b), (b, a)):
            if me not in row_of:
                continue
            y = top + row_of[me] * row_h + 3
            x0, x1 = x(c.start), x(c.end)
            w = max(x1 - x0, 1.0)
            out.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" rx="2" '
                f'fill="{colour}" fill-opacity="0.8"><title>{escape(tip)}</title></rect>'
            )
            if w > 6.5 * len(other) + 4:
                out.append(
                    f'<text x="{x0 + 2:.1f}" y="{y + row_h * 0.5:.1f}" fill="white" font-size="9">'
                    f"{escape(other)}</text>"
                )

    for tr in transfers:
        what = f"{tr.label}: " if tr.label else ""
        tip = f"{what}{tr.source} -> {tr.dest}, {format_time(tr.start)} to {format_time(tr.end)}"
        colour = RESTORE_COLOUR if tr.restore else TRANSFER_COLOUR
        for n in (tr.source, tr.dest):
            y = top + row_of[n] * row_h + row_h - 8
            x0, x1 = x(tr.start), x(tr.end)
            out.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 3.0):.1f}" height="5" fill="{colour}">'
                f"<title>{escape(tip)}</title></rect>"
            )

    label_ends: list[float] = []  # per text line of the labels: where its last label ends
    for mk in sorted(markers, key=lambda m: m.time):
        if not start <= mk.time <= end:
            continue
        colour, xx = MARKER_COLOURS[mk.kind], x(mk.time)
        tip = f"<title>{escape(f'{format_time(mk.time)}: {mk.label}')}</title>"
        if mk.row is None:
            out.append(
                f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{axis_y}" stroke="{colour}" stroke-width="1.5" '
                f'stroke-dasharray="4 3">{tip}</line>'
            )
            # Labels of nearby markers go on the next text line down instead of over each other.
            level = next((i for i, e in enumerate(label_ends) if xx > e), len(label_ends))
            if level == len(label_ends):
                label_ends.append(0.0)
            label_ends[level] = xx + 3 + 5.5 * len(mk.label) + 6
            y = top + 10 + 11 * (level % max(len(names), 1))
            out.append(
                f'<text x="{xx + 3:.1f}" y="{y}" fill="{colour}" font-size="9" stroke="white" stroke-width="2" '
                f'paint-order="stroke">{escape(mk.label)}</text>'
            )
        else:
            y = top + row_of[mk.row] * row_h + row_h / 2
            out.append(
                f'<path d="M{xx:.1f},{y - 6:.1f} L{xx + 5:.1f},{y:.1f} L{xx:.1f},{y + 6:.1f} L{xx - 5:.1f},{y:.1f} Z" '
                f'fill="{colour}" stroke="white" stroke-width="0.5">{tip}</path>'
            )

    legend = [(GROUND_COLOUR, "ground pass"), (ISL_COLOUR, "inter-satellite link")]
    if any(not t.restore for t in transfers):
        legend.append((TRANSFER_COLOUR, "transfer"))
    if any(t.restore for t in transfers):
        legend.append((RESTORE_COLOUR, "restore downlink"))
    legend += [(MARKER_COLOURS[k], _MARKER_LEGEND[k]) for k in MARKER_COLOURS if any(m.kind == k for m in markers)]
    widths = [14 + 6.5 * len(text) + 16 for _c, text in legend]  # swatch, text at ~6.5 px a letter, gap
    lx = width - pad - sum(widths)
    for (colour, text), w in zip(legend, widths, strict=True):
        out.append(f'<rect x="{lx:.0f}" y="{top - 16}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14:.0f}" y="{top - 7}">{text}</text>')
        lx += w
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _tick_interval(span: float) -> int:
    for tick in (300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 7 * 86400):
        if span / tick <= 14:
            return tick
    return 30 * 86400
