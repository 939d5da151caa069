"""Spend per person, tool, model and session, and /api/me for the credentials the proxy
takes: a virtual key or a person's sign-in token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import pagination, permissions, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Person, SignInToken, Team
from accounts.services import billed_team
from billing import budgets, reports
from billing.budgets import Budget
from billing.models import UsageDaily, UsageEvent
from llmproxy.console.api import serializers as s
from llmproxy.console.api.auth import SignInTokenAuthentication, VirtualKeyAuthentication
from llmproxy.console.api.permissions import may
from llmproxy.console.api.views import _moment, _text

DEFAULT_DAYS = 30
MAX_DAYS = 400  # what one report reads of the raw usage rows
MONEY = {"max_digits": 18, "decimal_places": 8}

RANGE = [
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="default: 30 days ago"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="exclusive; default: now"),
]


def date_range(query) -> tuple[datetime, datetime]:
    """``since``/``until`` from the query string: 30 days to now by default, at most 400."""
    until = _moment("until", query["until"]) if query.get("until") else datetime.now(UTC)
    since = (
        _moment("since", query["since"])
        if query.get("since")
        else until - timedelta(days=DEFAULT_DAYS)
    )
    if since >= until:
        raise ValidationError({"since": "must be before until"})
    if until - since > timedelta(days=MAX_DAYS):
        raise ValidationError({"since": f"a report covers at most {MAX_DAYS} days"})
    return since, until


class TotalsSerializer(s.StrictSerializer):
    cost_usd = serializers.DecimalField(**MONEY)
    requests = serializers.IntegerField()
    turns = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    first_at = serializers.DateTimeField()
    last_at = serializers.DateTimeField()


class BreakdownRowSerializer(TotalsSerializer):
    group = serializers.CharField(
        allow_null=True, help_text="The person, team or key id, the model, client or tool."
    )
    name = serializers.CharField(
        allow_null=True, help_text="by=person: the username; team, key: the name; else null"
    )
    tool = serializers.CharField(required=False, help_text="by=client: Claude Code, Codex or SDK")


class AgentSerializer(TotalsSerializer):
    agent_id = serializers.CharField(help_text="A subagent or Codex thread; empty: the main one")


class SessionSerializer(TotalsSerializer):
    session_id = serializers.CharField()
    person = serializers.IntegerField(allow_null=True)
    person_name = serializers.CharField(allow_null=True)
    client = serializers.CharField()
    tool = serializers.CharField(help_text="Claude Code, Codex or SDK")
    models = serializers.ListField(child=serializers.CharField())
    agents = AgentSerializer(many=True)


class SessionPageSerializer(s.StrictSerializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = SessionSerializer(many=True)


def _names(by: str, ids: set) -> dict:
    ids = {i for i in ids if i is not None}
    if by == "person":
        return dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    if by == "team":
        return dict(Team.objects.filter(pk__in=ids).values_list("pk", "name"))
    if by == "key":
        return {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=ids)}
    return {}


class SeesAllUsage(permissions.BasePermission):
    """Staff with the ``view`` permission on usage events (as for ``/api/usage/``)."""

    message = "You need the permission to view usage events (ask a superuser to grant it)."

    def has_permission(self, request, view) -> bool:
        return may(request.user, UsageEvent, "view")


class BreakdownView(APIView):
    """Staff who may view usage: spend, requests and turns per person, team, model, client,
    tool or key."""

    permission_classes = [SeesAllUsage]

    @extend_schema(
        parameters=[
            OpenApiParameter("by", str, enum=list(reports.BREAKDOWNS), default="person"),
            *RANGE,
        ],
        responses={200: BreakdownRowSerializer(many=True)},
    )
    def get(self, request):
        by = request.query_params.get("by", "person")
        if by not in reports.BREAKDOWNS:
            raise ValidationError({"by": f"one of {', '.join(reports.BREAKDOWNS)}"})
        since, until = date_range(request.query_params)
        rows = reports.breakdown(reports.in_range(UsageEvent.objects.all(), since, until), by)
        names = _names(by, {row["group"] for row in rows})
        for row in rows:
            row["name"] = names.get(row["group"])
            row["group"] = None if row["group"] is None else str(row["group"])
        return Response(BreakdownRowSerializer(rows, many=True).data)


class SessionPages(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def session_page(events, request, view) -> Response:
    """One page of sessions of ``events``, with their models and agents."""
    paginator = SessionPages()
    page = paginator.paginate_queryset(reports.sessions(events), request, view=view)
    rows = reports.with_details(events, list(page))
    names = _names("person", {row["person"] for row in rows})
    for row in rows:
        row["person_name"] = names.get(row["person"])
    return paginator.get_paginated_response(SessionSerializer(rows, many=True).data)


class SessionsView(APIView):
    """Sessions (Claude Code and Codex session ids) with their cost, turns, models, agents
    and first and last request. Staff who may view usage see everyone's (``person``
    filters); others their own."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            *RANGE,
            OpenApiParameter("person", int, description="staff: one person's (user id)"),
            OpenApiParameter("client", str, description="claude-code, codex, ..."),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="at most 200"),
        ],
        responses={200: SessionPageSerializer},
    )
    def get(self, request):
        query = request.query_params
        since, until = date_range(query)
        events = reports.in_range(UsageEvent.objects.all(), since, until)
        if not may(request.user, UsageEvent, "view"):
            events = events.filter(person=request.user)
        elif query.get("person"):
            try:
                events = events.filter(person_id=int(query["person"]))
            except ValueError:
                raise ValidationError({"person": "expected a user id"}) from None
        if query.get("client"):
            events = events.filter(client=_text("client", query["client"]))
        return session_page(events, request, self)


# --- /api/me --------------------------------------------------------------------------------


class PersonSerializer(s.StrictSerializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()
    teams = serializers.ListField(child=serializers.CharField())
    default_team = serializers.CharField(allow_null=True)


class SignInSerializer(s.StrictSerializer):
    client = serializers.CharField()
    expires_at = serializers.DateTimeField()


class MeSerializer(s.StrictSerializer):
    key = s.ApiKeySerializer(allow_null=True)
    sign_in = SignInSerializer(allow_null=True)
    person = PersonSerializer(allow_null=True)
    budgets = s.BudgetStateSerializer(many=True)
    spent_today_usd = serializers.DecimalField(**MONEY)


def _person(user) -> dict | None:
    if user is None or not user.is_authenticated:
        return None
    person = Person.objects.filter(user=user).select_related("default_team").first()
    return {
        "id": user.pk,
        "username": user.get_username(),
        "email": user.email,
        "teams": list(user.teams.values_list("name", flat=True)),
        "default_team": person.default_team.name if person and person.default_team else None,
    }


def budget_rows(found: tuple[Budget, ...], now: datetime) -> list[dict]:
    rows = []
    for state in (budgets.state(budget, now) for budget in found):
        rows.append(
            {
                "scope": state.budget.scope,
                "period": state.period,
                "limit_usd": state.budget.limit_usd,
                "spent_usd": state.spent_usd,
                "remaining_usd": state.remaining_usd,
            }
        )
    return rows


def person_budgets(user) -> tuple[Budget, ...]:
    """What a call of this person's sign-in counts against: their own budget and their
    default team's."""
    person = Person.objects.filter(user=user).select_related("default_team").first()
    return budgets.for_call(key=None, person=person, team=billed_team(key=None, person=person))


class KeyOrSignIn(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey | SignInToken)


class MeView(APIView):
    """For a virtual key (its policy, spend and remaining budgets) or a sign-in token (the
    person, their budgets and spend today): what a Claude Code status line needs."""

    authentication_classes = [VirtualKeyAuthentication, SignInTokenAuthentication]
    permission_classes = [KeyOrSignIn]

    @extend_schema(responses={200: MeSerializer})
    def get(self, request):
        now = datetime.now(UTC)
        auth = request.auth
        if isinstance(auth, ApiKey):
            found = budgets.for_key(auth)
            today = UsageDaily.objects.spent(Budget("key", auth.pk, Decimal(0), "day"), now)
            user = auth.owner
        else:
            user = request.user
            found = person_budgets(user)
            today = UsageDaily.objects.spent(Budget("person", user.pk, Decimal(0), "day"), now)
        data = {
            "key": auth if isinstance(auth, ApiKey) else None,
            "sign_in": (
                {"client": auth.client, "expires_at": auth.expires_at}
                if isinstance(auth, SignInToken)
                else None
            ),
            "person": _person(user),
            "budgets": budget_rows(found, now),
            "spent_today_usd": today,
        }
        return Response(MeSerializer(data).data)
