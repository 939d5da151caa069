"""Server-side SVG charts for the dashboard: no JavaScript, no CDN, works offline."""

from __future__ import annotations

from decimal import Decimal
from html import escape

PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
]  # fmt: skip


def money_decimals(top: Decimal, ticks: int = 2, least: int = 2, most: int = 8) -> int:
    """Decimals for the money axis up to ``top``: enough for two significant digits of the
    top, and for the labels ``top * i / ticks`` to differ from each other (a bar worth
    $0.0013 gets "$0.0013" and "$0.0006", not "$0.00" twice)."""
    if top <= 0:
        return least
    decimals = max(least, min(most, 1 - top.adjusted()))
    while decimals < most:
        labels = {money(top * step / ticks, decimals) for step in range(ticks + 1)}
        if len(labels) == ticks + 1:
            break
        decimals += 1
    return decimals


def money(value: Decimal, decimals: int) -> str:
    return f"${value:.{decimals}f}"


def day_labels(count: int, most: int = 8) -> list[int]:
    """Indexes of the days that get a label: evenly spaced, counted back from the last day,
    so the newest day is always labelled."""
    step = max(1, -(-count // most))
    return list(range(count - 1, -1, -step))[::-1]


def stacked_bars(
    days: list[str], series: dict[str, dict[str, Decimal]], width: int = 760, height: int = 240
) -> str:
    """One bar per day, stacked by series (model, team or key); the tooltip shows each part."""
    if not days:
        return '<p class="empty">No usage in this period.</p>'
    totals = [
        sum((series[name].get(day, Decimal(0)) for name in series), Decimal(0)) for day in days
    ]
    top = max(totals) or Decimal(1)
    decimals = money_decimals(top)
    top_label, middle_label = money(top, decimals), money(top / 2, decimals)
    bottom, gap = 24, 2
    left = max(56, 7 * len(top_label) + 6)  # room for the widest label at 11px
    bar = max(2, (width - left) // len(days) - gap)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + bottom}" '
        f'width="100%" aria-label="spend per day">',
        f'<text x="0" y="12" class="axis y">{top_label}</text>',
        f'<text x="0" y="{height // 2 + 4}" class="axis y">{middle_label}</text>',
        f'<text x="0" y="{height}" class="axis y">$0</text>',
    ]
    labelled = set(day_labels(len(days)))
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
                f"<title>{escape(day)} {escape(name)}: "
                f"{money(value, money_decimals(value, least=4))}</title></rect>"
            )
        if index in labelled:
            # Centred under its bar; the last one ends at its bar's right edge (never cut off).
            last = index == len(days) - 1
            anchor, at = ("end", x + bar) if last else ("middle", x + bar // 2)
            parts.append(
                f'<text x="{at}" y="{height + 16}" text-anchor="{anchor}" class="axis x">'
                f"{escape(day[5:])}</text>"
            )
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
