"""Spend reports: who spent what, with which tool and model, in which session.

Every report reads a queryset of usage rows the caller has already bounded (a time range,
and for a person their own rows): the API and the dashboard pass ``in_range`` of
``UsageEvent.objects``. Sessions are the client's own ids (Claude Code's
``X-Claude-Code-Session-Id``, Codex's ``session-id``); within one, ``agent_id`` tells a
Claude Code subagent or a Codex thread apart.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Case, CharField, Count, Max, Min, Q, QuerySet, Sum, Value, When

from billing.models import UsageKind

# The tools a person uses, from the client the gateway recorded (llmproxy.gateway.exchange).
TOOLS = {"claude-code": "Claude Code", "codex": "Codex"}
SDK = "SDK"
# ?by= → the usage column each breakdown groups on.
BREAKDOWNS = {
    "person": "person",
    "team": "team",
    "model": "model",
    "client": "client",
    "tool": "tool",
    "key": "api_key",
}

TOTALS = {
    "cost_usd": Sum("cost_usd"),
    "requests": Count("id"),
    "turns": Count("id", filter=Q(kind=UsageKind.TURN)),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "first_at": Min("created_at"),
    "last_at": Max("created_at"),
}


def in_range(events: QuerySet, since: datetime, until: datetime | None = None) -> QuerySet:
    events = events.filter(created_at__gte=since)
    return events if until is None else events.filter(created_at__lt=until)


def tool_of(client: str) -> str:
    return TOOLS.get(client, SDK)


def _with_tool(events: QuerySet) -> QuerySet:
    whens = [When(client=client, then=Value(label)) for client, label in TOOLS.items()]
    return events.annotate(tool=Case(*whens, default=Value(SDK), output_field=CharField()))


def breakdown(events: QuerySet, by: str) -> list[dict]:
    """Totals per person, team, model, client, tool or key, the most spent first; each
    row's ``group`` is the id or name it is about (None: no person, team or key)."""
    column = BREAKDOWNS[by]
    if by == "tool":
        events = _with_tool(events)
    rows = list(
        events.values(column)
        .annotate(**TOTALS)
        .order_by("-cost_usd", column)
        .values(column, *TOTALS)
    )
    for row in rows:
        row["group"] = row.pop(column)
        if by == "client":
            row["tool"] = tool_of(row["group"] or "")
    return rows


def sessions(events: QuerySet) -> QuerySet:
    """One row per session (with its person and client), the most recent first; calls
    without a session id are left out. Page it, then ``with_details``."""
    return (
        events.exclude(session_id="")
        .values("session_id", "person", "client")
        .annotate(**TOTALS)
        .order_by("-last_at", "session_id")
    )


def with_details(events: QuerySet, rows: list[dict]) -> list[dict]:
    """The models and agents (subagents, threads) of each session row of a page."""
    ids = {row["session_id"] for row in rows}
    scoped = events.filter(session_id__in=ids)
    models: dict[str, set[str]] = {}
    for session_id, model in scoped.values_list("session_id", "model").distinct():
        models.setdefault(session_id, set()).add(model)
    agents: dict[str, list[dict]] = {}
    for agent in (
        scoped.values("session_id", "agent_id").annotate(**TOTALS).order_by("first_at", "agent_id")
    ):
        agents.setdefault(agent.pop("session_id"), []).append(agent)
    for row in rows:
        row["tool"] = tool_of(row["client"])
        row["models"] = sorted(models.get(row["session_id"], ()))
        row["agents"] = agents.get(row["session_id"], [])
    return rows
