"""Chart geometry for server-drawn SVG: bars and lines with axes, ticks and labels, as plain numbers and strings.

The template (templates/ci_integrations/partials/chart.svg.html) draws these with Django's autoescaping, so no
markup is built here, and the page needs no script (the site's CSP allows none inline). Nothing here knows Django.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44  # room for the y tick labels and the x labels with the axis title
MAX_X_LABELS = 8  # more would overlap at this width


@dataclass
class Tick:
    """A y-axis gridline: its height in the drawing and its label."""

    y: float
    label: str


@dataclass
class Bar:
    """One bar, as a rectangle, with the value it stands for (for its tooltip)."""

    x: float
    y: float
    width: float
    height: float
    title: str
    part: str  # the CSS class: which series it belongs to


@dataclass
class XLabel:
    """A label under the x axis, centred on its slot."""

    x: float
    label: str


@dataclass
class Point:
    """One value of a line chart, with its tooltip."""

    x: float
    y: float
    title: str


@dataclass
class Chart:
    """Everything the SVG template draws, in the SVG's own coordinates (a viewBox of WIDTH × HEIGHT)."""

    key: str  # the chart's id in the page
    title: str
    summary: str  # what the chart shows, in words: read by screen readers and shown under the chart
    y_title: str
    x_title: str
    ticks: list[Tick]
    x_labels: list[XLabel]
    bars: list[Bar] = field(default_factory=list)
    line: str = ""  # an SVG polyline `points` attribute
    points: list[Point] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (CSS class, label)
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM

    @property
    def has_data(self) -> bool:
        """Whether there is anything to draw (an empty chart shows its axes and a sentence instead)."""
        return bool(self.bars or self.points)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at least `value`: an axis top a person reads at a glance."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value - 1e-9:
            return float(candidate)
    return float(10 ** (exponent + 1))


def _ticks(top: float, count: int, fmt) -> list[Tick]:
    """`count` + 1 evenly spaced gridlines from 0 to `top`."""
    span = HEIGHT - BOTTOM - TOP
    return [Tick(y=HEIGHT - BOTTOM - span * i / count, label=fmt(top * i / count)) for i in range(count + 1)]


def _slots(count: int) -> tuple[float, list[float]]:
    """The width of each of `count` equal slots across the plot, and each slot's left edge."""
    plot = WIDTH - LEFT - RIGHT
    width = plot / max(count, 1)
    return width, [LEFT + i * width for i in range(count)]


def _x_labels(labels: list[str], lefts: list[float], width: float) -> list[XLabel]:
    """Labels under the slots, every n-th one so that at most MAX_X_LABELS show."""
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    return [XLabel(x=lefts[i] + width / 2, label=labels[i]) for i in range(0, len(labels), every)]


def _whole(value: float) -> str:
    """A tick label without a trailing ".0"."""
    return f"{value:g}"


def stacked_bars(
    *,
    key: str,
    title: str,
    summary: str,
    labels: list[str],
    series: list[tuple[str, str, list[int]]],
    y_title: str,
    x_title: str,
) -> Chart:
    """A bar per label, each stacked from `series` (CSS class, legend label, one count per label), bottom first."""
    totals = [sum(values[i] for _, _, values in series) for i in range(len(labels))]
    top = nice_ceiling(max(totals, default=0))
    if top < 4:
        top = 4.0  # whole-number ticks: 0, 1, 2, 3, 4
    span = HEIGHT - BOTTOM - TOP
    width, lefts = _slots(len(labels))
    gap = min(width * 0.2, 8)
    bars = []
    for i, label in enumerate(labels):
        base = 0
        for part, name, values in series:
            if values[i]:
                height = span * values[i] / top
                y = HEIGHT - BOTTOM - span * (base + values[i]) / top
                bars.append(Bar(lefts[i] + gap / 2, y, width - gap, height, f"{label}: {values[i]} {name}", part))
            base += values[i]
    return Chart(
        key=key,
        title=title,
        summary=summary,
        y_title=y_title,
        x_title=x_title,
        ticks=_ticks(top, 4, _whole),
        x_labels=_x_labels(labels, lefts, width),
        bars=bars,
        legend=[(part, name) for part, name, _ in series],
    )


def line(
    *,
    key: str,
    title: str,
    summary: str,
    labels: list[str],
    values: list[float | None],
    unit: str,
    y_title: str,
    x_title: str,
) -> Chart:
    """A line through the values that exist (a gap where a period has none), with a dot on each."""
    present = [v for v in values if v is not None]
    top = nice_ceiling(max(present, default=0))
    span = HEIGHT - BOTTOM - TOP
    width, lefts = _slots(len(labels))
    points = [
        Point(lefts[i] + width / 2, HEIGHT - BOTTOM - span * v / top, f"{labels[i]}: {v:.3g} {unit}")
        for i, v in enumerate(values)
        if v is not None
    ]
    return Chart(
        key=key,
        title=title,
        summary=summary,
        y_title=y_title,
        x_title=x_title,
        ticks=_ticks(top, 4, lambda v: f"{v:.3g}"),
        x_labels=_x_labels(labels, lefts, width),
        line=" ".join(f"{p.x:.1f},{p.y:.1f}" for p in points),
        points=points,
        legend=[],
    )


def duration_unit(seconds: list[float]) -> tuple[str, float]:
    """The unit that keeps these durations readable (minutes, hours or days) and seconds per unit."""
    largest = max(seconds, default=0)
    if largest >= 3 * 86400:
        return "days", 86400.0
    if largest >= 3 * 3600:
        return "hours", 3600.0
    return "minutes", 60.0


def human_duration(seconds: float | None) -> str:
    """A duration as a person says it: "45 min", "5.5 h", "3.2 days"; an em dash when there is none."""
    if seconds is None:
        return "—"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
