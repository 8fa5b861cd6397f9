"""Server-rendered SVG charts: no JavaScript library and no network needed to draw them.

Why SVG from Python: the numbers are already here, the page works without scripts, and the
markup is small. Each chart carries a <title>/<desc> and the pages show the same numbers in a
table, so screen readers get the data too. Colours and line styles come from CSS classes
(static/dashboard.css); series also differ by dash pattern, so colour is never the only cue.
The what-if chart exposes its scale as data-* attributes so static/whatif.js can move a cursor
over it without redrawing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44


@dataclass(frozen=True)
class Series:
    """One line: its legend name, points and CSS class (s1..s4 pick colour and dash)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    css: str = "s1"
    dots: bool = False


@dataclass
class Scale:
    """Linear map from data values to pixels."""

    lo: float
    hi: float
    p0: float
    p1: float
    ticks: list[float] = field(default_factory=list)

    def __call__(self, v: float) -> float:
        span = self.hi - self.lo
        return self.p0 + (v - self.lo) / span * (self.p1 - self.p0) if span else self.p0


def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    """Round tick values covering [lo, hi] (the usual 1-2-5 steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]
    return ticks[0], ticks[-1], ticks


def fmt_number(v: float) -> str:
    """Short axis label: 1.2k, 3.5M, 0.25."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def fmt_time(v: float) -> str:
    """Axis label for an epoch-seconds x value."""
    return datetime.fromtimestamp(v, UTC).strftime("%H:%M:%S")


def _polyline(series: Series, x: Scale, y: Scale) -> str:
    pts = [
        f"{x(a):.1f},{y(b):.1f}"
        for a, b in zip(series.xs, series.ys, strict=True)
        if b is not None and math.isfinite(b)
    ]
    if not pts:
        return ""
    out = f'<polyline class="line {series.css}" points="{" ".join(pts)}"/>'
    if series.dots or len(pts) == 1:
        coords = (p.split(",") for p in pts)
        out += "".join(
            f'<circle class="dot {series.css}" cx="{a}" cy="{b}" r="3"/>' for a, b in coords
        )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_format: Callable[[float], str] = fmt_number,
    marker_x: float | None = None,
    marker_label: str = "",
    chart_id: str,
    zero_y: bool = True,
) -> Markup:
    """A line chart with axes, ticks, a legend and an optional vertical marker."""
    xs = [float(v) for s in series for v in s.xs]
    ys = [float(v) for s in series for v in s.ys if v is not None and math.isfinite(v)]
    if marker_x is not None:
        xs.append(marker_x)
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if zero_y:
        y_lo = min(y_lo, 0.0)
    y_lo, y_hi, y_ticks = nice_ticks(y_lo, y_hi)
    x = Scale(x_lo, x_hi, LEFT, WIDTH - RIGHT)
    y = Scale(y_lo, y_hi, HEIGHT - BOTTOM, TOP, y_ticks)
    x_ticks = [x_lo + (x_hi - x_lo) * i / 4 for i in range(5)]
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" id="{escape(chart_id)}"'
        f' data-x0="{x.p0}" data-x1="{x.p1}" data-xmin="{x_lo!r}" data-xmax="{x_hi!r}"'
        f' data-y0="{y.p0}" data-y1="{y.p1}" data-ymin="{y_lo!r}" data-ymax="{y_hi!r}">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(y_label)} against {escape(x_label)}: '
        + escape(", ".join(s.name for s in series))
        + "</desc>",
    ]
    for t in y_ticks:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">'
            f"{escape(fmt_number(t))}</text>"
        )
    for i, t in enumerate(x_ticks):  # the end labels lean inwards so none is clipped
        anchor = "start" if i == 0 else "end" if i == len(x_ticks) - 1 else "middle"
        parts.append(
            f'<text class="tick{" minor" if i % 2 else ""}" x="{x(t):.1f}" '
            f'y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}">{escape(x_format(t))}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" '
        f'y2="{HEIGHT - BOTTOM}"/><line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" '
        f'y2="{HEIGHT - BOTTOM}"/>'
        f'<text class="label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="label" x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>'
    )
    parts.extend(_polyline(s, x, y) for s in series)
    if marker_x is not None:
        mx = x(marker_x)
        parts.append(
            f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{TOP}" '
            f'y2="{HEIGHT - BOTTOM}"/><text class="marker-label" x="{mx + 4:.1f}" '
            f'y="{TOP + 12}">{escape(marker_label)}</text>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg class="key" viewBox="0 0 24 8" aria-hidden="true"><line class="line '
        f'{s.css}" x1="0" x2="24" y1="4" y2="4"/></svg>{escape(s.name)}</li>'
        for s in series
    )
    if marker_x is not None and marker_label:
        legend += (
            '<li><svg class="key" viewBox="0 0 24 8" aria-hidden="true"><line class="marker" '
            f'x1="0" x2="24" y1="4" y2="4"/></svg>{escape(marker_label)}</li>'
        )
    return Markup(
        f'<figure class="figure">{"".join(parts)}<ul class="legend">{legend}</ul></figure>'
    )


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    title: str,
    y_label: str,
    chart_id: str,
) -> Markup:
    """Grouped bars: one group per category (e.g. arm), one bar per (name, values, css)."""
    values = [v for _, vs, _ in series for v in vs if math.isfinite(v)]
    y_lo, y_hi, ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]) or 1.0)
    y = Scale(y_lo, y_hi, HEIGHT - BOTTOM, TOP, ticks)
    band = (WIDTH - LEFT - RIGHT) / max(len(groups), 1)
    bar = band * 0.7 / max(len(series), 1)
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t"><title id="{chart_id}-t">{escape(title)}</title>'
    ]
    for t in ticks:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">'
            f"{escape(fmt_number(t))}</text>"
        )
    for g, name in enumerate(groups):
        x0 = LEFT + g * band + band * 0.15
        for s, (_, vs, css) in enumerate(series):
            v = vs[g]
            top, base = y(max(v, 0.0)), y(min(v, 0.0))
            parts.append(
                f'<rect class="bar {css}" x="{x0 + s * bar:.1f}" y="{top:.1f}" '
                f'width="{bar * 0.92:.1f}" height="{max(base - top, 0.5):.1f}"/>'
            )
        parts.append(
            f'<text class="tick" x="{LEFT + (g + 0.5) * band:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{escape(name)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>'
        f'<text class="label" x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text></svg>'
    )
    legend = "".join(
        f'<li><svg class="key" viewBox="0 0 24 8" aria-hidden="true"><rect class="bar {css}" '
        f'x="0" y="0" width="24" height="8"/></svg>{escape(name)}</li>'
        for name, _, css in series
    )
    return Markup(
        f'<figure class="figure">{"".join(parts)}<ul class="legend">{legend}</ul></figure>'
    )
