"""Budget periods in UTC: day, week (from Monday), month, or the key's whole lifetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "total":
        return EPOCH
    raise ValueError(f"unknown budget period {period!r}")


def period_end(period: str, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        return (start + timedelta(days=32)).replace(day=1)
    return None


def period_key(period: str, now: datetime) -> str:
    """A name for the current period, part of the counter's key: a new period, a new counter."""
    return f"{period}:{period_start(period, now):%Y-%m-%d}"
