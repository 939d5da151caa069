from __future__ import annotations

import csv
from contextlib import contextmanager
from datetime import UTC, date, datetime, time

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate
from django.http import StreamingHttpResponse
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, pagination, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services as key_services
from accounts.models import ApiKey, ApiToken, Team
from billing.models import Price, UsageDaily, UsageEvent
from llmproxy.console.api import serializers as s
from llmproxy.console.api.permissions import (
    ModelPermission,
    ModelPermissionOrOwn,
    SuperuserWrites,
    may,
)
from llmproxy.gateway.models import ModelRoute, Provider


class KeySecretConflict(APIException):
    """This process's digest secret is not the one the existing keys were made with."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "key_secret_mismatch"


@contextmanager
def _key_secret_conflict_is_409():
    """Around a service that makes a key or token secret (accounts checks the secret)."""
    try:
        yield
    except key_services.KeySecretMismatch as exc:
        raise KeySecretConflict(str(exc)) from None


class Pages(pagination.PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


# --- keys ------------------------------------------------------------------------------------


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Virtual keys. Staff with the key permissions see (view) and change (change, add) all;
    an owner sees own keys, may rotate or revoke them and tighten (never loosen) their
    limits."""

    serializer_class = s.ApiKeySerializer
    permission_classes = [ModelPermissionOrOwn]
    owner_actions = {"update", "partial_update", "rotate", "revoke"}
    action_permissions = {"rotate": "change", "revoke": "change"}
    pagination_class = Pages
    queryset = ApiKey.objects.none()  # for the schema; get_queryset scopes it per caller

    def get_queryset(self):
        keys = ApiKey.objects.select_related("team").order_by("-created_at", "-id")
        if may(self.request.user, ApiKey, "view"):
            return keys
        return keys.filter(owner=self.request.user)

    def is_own(self, key: ApiKey) -> bool:
        return key.owner_id == self.request.user.pk

    def get_serializer_class(self):
        return s.NewKeySerializer if self.action == "create" else s.ApiKeySerializer

    @extend_schema(request=s.ApiKeySerializer, responses={201: s.NewKeySerializer})
    def create(self, request, *args, **kwargs):
        serializer = s.ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with _key_secret_conflict_is_409():
            key, secret = key_services.create_key(**serializer.validated_data)
        body = s.ApiKeySerializer(key).data | {"key": secret}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    def perform_update(self, serializer):
        if not may(self.request.user, ApiKey, "change"):
            try:
                key_services.check_owner_change(
                    key=serializer.instance, changes=serializer.validated_data
                )
            except key_services.NotAllowed as refusal:
                raise PermissionDenied(str(refusal)) from None
        serializer.save()

    @extend_schema(request=None, responses={200: s.SecretSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        key = self.get_object()
        s.NoInputSerializer(data=request.data).is_valid(raise_exception=True)
        with _key_secret_conflict_is_409():
            secret = key_services.rotate_key(key=key)
        return Response(
            {"id": key.pk, "prefix": key.prefix, "key": secret},
            headers={"Cache-Control": "no-store"},
        )

    @extend_schema(request=s.RevokeSerializer, responses={200: s.ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        key = self.get_object()
        data = s.RevokeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        reason = data.validated_data.get("reason") or f"revoked by {request.user.get_username()}"
        key_services.revoke_keys(queryset=ApiKey.objects.filter(pk=key.pk), reason=reason)
        key.refresh_from_db()
        return Response(s.ApiKeySerializer(key).data)


# --- people, teams, providers, routes, prices ---------------------------------------------------


class TeamViewSet(viewsets.ModelViewSet):
    """Teams, their policies and budgets. Staff with the team permissions manage them;
    members read their own teams."""

    serializer_class = s.TeamSerializer
    permission_classes = [ModelPermissionOrOwn]
    owner_actions: set[str] = set()
    pagination_class = Pages
    queryset = Team.objects.none()

    def get_queryset(self):
        teams = Team.objects.prefetch_related("members").order_by("name")
        if may(self.request.user, Team, "view"):
            return teams
        return teams.filter(members=self.request.user)


class StaffViewSet(viewsets.ModelViewSet):
    """Staff with the model permission each action needs (view, add, change, delete)."""

    permission_classes = [ModelPermission]
    pagination_class = Pages


class UserViewSet(StaffViewSet):
    """People's accounts. Staff and superuser flags, and superusers' accounts, are changed
    by superusers only."""

    serializer_class = s.UserSerializer
    queryset = get_user_model().objects.order_by("id")

    def perform_create(self, serializer):
        s.check_user_flags(self.request.user, None, serializer.validated_data)
        serializer.save()

    def perform_update(self, serializer):
        s.check_user_flags(self.request.user, serializer.instance, serializer.validated_data)
        serializer.save()

    def perform_destroy(self, instance):
        if instance.pk == self.request.user.pk:
            # The audit entry of the deletion names its actor: an account cannot be both.
            raise PermissionDenied("You cannot delete your own account; ask another admin.")
        s.check_user_flags(self.request.user, instance, {})
        instance.delete()


class ProviderViewSet(StaffViewSet):
    """Upstream providers; the credential is write-only. Reading needs the provider view
    permission; adding, changing and deleting a provider is for superusers only."""

    permission_classes = [SuperuserWrites]
    serializer_class = s.ProviderSerializer
    queryset = Provider.objects.order_by("name")


class ModelRouteViewSet(StaffViewSet):
    serializer_class = s.ModelRouteSerializer
    queryset = ModelRoute.objects.order_by("priority", "pattern")


class PriceViewSet(StaffViewSet):
    serializer_class = s.PriceSerializer
    queryset = Price.objects.order_by("model_pattern")


class TokenViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Management API tokens: your own (a superuser: everyone's). The secret is shown once,
    at creation. A token acts as its person, so only a superuser mints (``user``) or sees
    one for someone else."""

    serializer_class = s.TokenSerializer
    permission_classes = [IsAuthenticated]
    queryset = ApiToken.objects.none()

    def get_queryset(self):
        tokens = ApiToken.objects.order_by("-created_at", "-id")
        if self.request.user.is_superuser:
            return tokens
        return tokens.filter(user=self.request.user)

    @extend_schema(responses={201: s.NewTokenSerializer})
    def create(self, request, *args, **kwargs):
        serializer = s.TokenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data.get("user") or request.user
        if user != request.user and not request.user.is_superuser:
            raise PermissionDenied("Only a superuser makes API tokens for someone else.")
        with _key_secret_conflict_is_409():
            token, secret = key_services.create_api_token(
                user=user, name=serializer.validated_data["name"]
            )
        body = s.TokenSerializer(token).data | {"token": secret}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


# --- usage -------------------------------------------------------------------------------------

USAGE_FILTERS = [
    OpenApiParameter("key", int, description="API key id"),
    OpenApiParameter("team", int, description="team id"),
    OpenApiParameter("model", str),
    OpenApiParameter("client", str, description="claude-code, codex, anthropic-python, ..."),
    OpenApiParameter("kind", str, description="turn, compaction, count"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="ISO date or time (UTC)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="ISO date or time, exclusive"),
]


def _moment(name: str, value: str) -> datetime:
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValidationError({name: "expected an ISO 8601 date or date-time"})
            moment = datetime(day.year, day.month, day.day)
        # In UTC now, so a time the database cannot hold is this 400, not a failed query.
        return moment.replace(tzinfo=UTC) if not moment.tzinfo else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationError({name: "not a valid date or date-time"}) from None


BIGINT_MAX = 2**63 - 1


def _integer(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > BIGINT_MAX:
        raise ValidationError({name: "expected an id"})
    return int(value)


def _text(name: str, value: str) -> str:
    if "\x00" in value:
        raise ValidationError({name: "must not contain NUL characters"})
    return value


def usage_for(request):
    """Usage the caller may see, filtered by the query string."""
    events = UsageEvent.objects.all()
    if not may(request.user, UsageEvent, "view"):
        events = events.filter(api_key__owner=request.user)
    query = request.query_params
    if query.get("key"):
        events = events.filter(api_key_id=_integer("key", query["key"]))
    if query.get("team"):
        events = events.filter(team_id=_integer("team", query["team"]))
    for field in ("model", "client", "kind"):
        if query.get(field):
            events = events.filter(**{field: _text(field, query[field])})
    if query.get("since"):
        events = events.filter(created_at__gte=_moment("since", query["since"]))
    if query.get("until"):
        events = events.filter(created_at__lt=_moment("until", query["until"]))
    return events


CSV_FIELDS = s.UsageEventSerializer.Meta.fields


class Echo:
    def write(self, value):
        return value


class UsageViewSet(viewsets.ReadOnlyModelViewSet):
    """Usage events, newest first. ``?export=csv`` streams all matching rows as CSV."""

    serializer_class = s.UsageEventSerializer
    permission_classes = [IsAuthenticated]
    pagination_class = Pages
    queryset = UsageEvent.objects.none()

    def get_queryset(self):
        return usage_for(self.request).order_by("-created_at", "-id")

    @extend_schema(
        parameters=[
            *USAGE_FILTERS,
            OpenApiParameter("export", str, enum=["csv"], description="csv: all rows as CSV"),
        ]
    )
    def list(self, request, *args, **kwargs):
        if request.query_params.get("export") == "csv":
            return self._csv()
        return super().list(request, *args, **kwargs)

    def _csv(self) -> StreamingHttpResponse:
        writer = csv.writer(Echo())
        columns = [f + "_id" if f in ("api_key", "team", "provider") else f for f in CSV_FIELDS]
        rows = self.get_queryset().values_list(*columns, "id")
        chunk = 2000

        def page(after: tuple | None) -> list[tuple]:
            # Keyset pages in the list's order (newest first): each query is short and the
            # export never holds a cursor open while the client reads slowly.
            page_rows = rows
            if after is not None:
                created, row_id = after
                page_rows = rows.filter(
                    Q(created_at__lt=created) | Q(created_at=created, id__lt=row_id)
                )
            return list(page_rows[:chunk])

        created_at = columns.index("created_at")
        # The first page is read here, before the status line goes out: a failing query is
        # still an error response, never a 200 that breaks off.
        first = page(None)

        def after(batch: list[tuple]) -> tuple | None:
            return (batch[-1][created_at], batch[-1][-1]) if len(batch) == chunk else None

        def lines():
            yield writer.writerow(CSV_FIELDS)
            batch = first
            while True:
                yield "".join(writer.writerow(row[:-1]) for row in batch)
                if (cursor := after(batch)) is None:
                    return
                batch = page(cursor)

        async def alines():
            yield writer.writerow(CSV_FIELDS)
            batch = first
            while True:
                yield "".join(writer.writerow(row[:-1]) for row in batch)
                if (cursor := after(batch)) is None:
                    return
                batch = await sync_to_async(page)(cursor)

        # Under ASGI (uvicorn) an async iterator streams; Django would buffer a sync one whole.
        under_asgi = isinstance(self.request._request, ASGIRequest)
        response = StreamingHttpResponse(
            alines() if under_asgi else lines(), content_type="text/csv"
        )
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response


GROUPS = {"day": TruncDate("created_at"), "key": "api_key_id", "team": "team_id", "model": "model"}
ROLLUP_GROUPS = {"day": "day", "key": "api_key_id", "team": "team_id", "model": "model"}


def _whole_day(name: str, query) -> date | None:
    moment = _moment(name, query[name])
    return moment.date() if moment == datetime.combine(moment.date(), time(), UTC) else None


def spend_by_day_for(request):
    """``usage_for``'s filters on the daily rollups, or None when ``since`` or ``until``
    falls within a day."""
    rows = UsageDaily.objects.all()
    if not may(request.user, UsageEvent, "view"):
        rows = rows.filter(api_key_id__in=ApiKey.objects.filter(owner=request.user).values("pk"))
    query = request.query_params
    if query.get("key"):
        rows = rows.filter(api_key_id=_integer("key", query["key"]))
    if query.get("team"):
        rows = rows.filter(team_id=_integer("team", query["team"]))
    for field in ("model", "client", "kind"):
        if query.get(field):
            rows = rows.filter(**{field: _text(field, query[field])})
    for name, lookup in (("since", "day__gte"), ("until", "day__lt")):
        if query.get(name):
            day = _whole_day(name, query)
            if day is None:
                return None
            rows = rows.filter(**{lookup: day})
    return rows


class SpendView(APIView):
    """Spend and tokens grouped by day, key, team or model, over the usage filters."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[OpenApiParameter("by", str, enum=list(GROUPS), default="day"), *USAGE_FILTERS],
        responses={200: s.SpendRowSerializer(many=True)},
    )
    def get(self, request):
        by = request.query_params.get("by", "day")
        if by not in GROUPS:
            raise ValidationError({"by": f"one of {', '.join(GROUPS)}"})
        daily = spend_by_day_for(request)
        if daily is not None:  # whole UTC days: the daily rollups answer
            rows = (
                daily.annotate(group=F(ROLLUP_GROUPS[by]))
                .values("group")
                .annotate(
                    requests=Sum("requests"),
                    input_tokens=Sum("input_tokens"),
                    output_tokens=Sum("output_tokens"),
                    cost_usd=Sum("cost_usd"),
                )
                .order_by("group")
            )
        else:  # a bound within a day: only the raw rows know
            rows = (
                usage_for(request)
                .annotate(group=GROUPS[by] if by == "day" else F(GROUPS[by]))
                .values("group")
                .annotate(
                    requests=Count("id"),
                    input_tokens=Sum("input_tokens"),
                    output_tokens=Sum("output_tokens"),
                    cost_usd=Sum("cost_usd"),
                )
                .order_by("group")
            )
        rows = [{**row, "group": row["group"] or None} for row in rows]  # 0: no key or team
        names = _group_names(by, {row["group"] for row in rows} - {None})
        data = [
            {
                **row,
                "group": None if row["group"] is None else str(row["group"]),
                "name": names.get(row["group"], (None, None))[0],
                "prefix": names.get(row["group"], (None, None))[1],
            }
            for row in rows
        ]
        return Response(s.SpendRowSerializer(data, many=True).data)


def _group_names(by: str, ids: set) -> dict:
    """For rows grouped by key or team: each id's (name, key prefix)."""
    if by == "key":
        return {k.pk: (k.name, k.prefix) for k in ApiKey.objects.filter(pk__in=ids)}
    if by == "team":
        return {t.pk: (t.name, None) for t in Team.objects.filter(pk__in=ids)}
    return {}
