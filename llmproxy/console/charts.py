"""Server-side SVG charts for the dashboard: no JavaScript, no CDN, works offline."""

from __future__ import annotations

from decimal import Decimal
from html import escape

PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
]  # fmt: skip


def stacked_bars(
    days: list[str], series: dict[str, dict[str, Decimal]], width: int = 760, height: int = 240
) -> str:
    """One bar per day, stacked by series (model or team); the tooltip shows each part."""
    if not days:
        return '<p class="empty">No usage in this period.</p>'
    totals = [
        sum((series[name].get(day, Decimal(0)) for name in series), Decimal(0)) for day in days
    ]
    top = max(totals) or Decimal(1)
    left, bottom, gap = 56, 24, 2
    bar = max(2, (width - left) // len(days) - gap)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + bottom}" '
        f'width="100%" aria-label="spend per day">',
        f'<text x="0" y="12" class="axis">${top:.2f}</text>',
        f'<text x="0" y="{height}" class="axis">$0</text>',
    ]
    for index, day in enumerate(days):
        x = left + index * (bar + gap)
        y = height
        for number, name in enumerate(series):
            value = series[name].get(day, Decimal(0))
            if not value:
                continue
            h = max(1, int(height * value / top))
            y -= h
            colour = PALETTE[number % len(PALETTE)]
            parts.append(
                f'<rect x="{x}" y="{y}" width="{bar}" height="{h}" fill="{colour}">'
                f"<title>{escape(day)} {escape(name)}: ${value:.4f}</title></rect>"
            )
        if index % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{x}" y="{height + 16}" class="axis">{escape(day[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts) + legend(list(series))


def legend(names: list[str]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f"{escape(name)}</li>"
        for i, name in enumerate(names)
    )
    return f'<ul class="legend">{items}</ul>'


def burn_bar(spent: Decimal, limit: Decimal, width: int = 240) -> str:
    """A budget bar: spent against the limit, red from 80 %."""
    share = min(Decimal(1), spent / limit) if limit else Decimal(1)
    colour = "#e15759" if share >= Decimal("0.8") else "#59a14f"
    filled = int(width * share)
    return (
        f'<svg class="burn" width="{width}" height="12" role="img" '
        f'aria-label="{share * 100:.0f}% of budget">'
        f'<rect width="{width}" height="12" fill="#eee"></rect>'
        f'<rect width="{filled}" height="12" fill="{colour}"></rect></svg>'
    )
