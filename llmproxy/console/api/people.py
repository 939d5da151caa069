"""People on the management API: a person's own policy and budget, team memberships, and
sign-ins (list and revoke; a token's secret or digest is never shown).

Permissions as everywhere (permissions.py): staff with the model permissions act on
everyone; without them a person reads their own row, memberships and sign-ins, and may end
their own sign-ins.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts import signin
from accounts.models import Person, SignInToken, Team
from llmproxy.console.api.permissions import ModelPermissionOrOwn, may
from llmproxy.console.api.serializers import (
    RevokeSerializer,
    StrictModelSerializer,
    StrictSerializer,
    layer_patterns,
)
from llmproxy.console.api.views import Pages, _integer


def money() -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=Decimal(0), allow_null=True, required=False
    )


class PersonSerializer(StrictModelSerializer):
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all())
    username = serializers.CharField(source="user.username", read_only=True)
    teams = serializers.SerializerMethodField(help_text="ids of the teams the person is in")
    allowed_models = layer_patterns()
    allowed_endpoints = layer_patterns()
    allowed_tools = layer_patterns()
    budget_usd = money()

    class Meta:
        model = Person
        fields = [
            "user", "username", "teams", "default_team", "allowed_models", "allowed_endpoints",
            "allowed_tools", "rpm", "tpm", "max_concurrent", "budget_usd", "budget_period",
            "alert_webhook_url",
        ]  # fmt: skip

    def get_teams(self, person: Person) -> list[int]:
        return sorted(team.pk for team in person.user.teams.all())

    def validate(self, attrs):
        user = attrs.get("user") or self.instance.user
        if self.instance is not None and attrs.get("user", user) != self.instance.user:
            raise ValidationError({"user": "A person's user cannot change."})
        if self.instance is None and Person.objects.filter(user=user).exists():
            raise ValidationError({"user": "This person already has a row; change it instead."})
        team = attrs.get("default_team", self.instance.default_team if self.instance else None)
        if team is not None and not team.members.filter(pk=user.pk).exists():
            raise ValidationError({"default_team": "The person is not a member of this team."})
        return attrs


class PersonViewSet(viewsets.ModelViewSet):
    """A person's policy and budget, on top of each of their keys and sign-ins; identified
    by their user id. With the person permissions: everyone's; otherwise your own, to read."""

    serializer_class = PersonSerializer
    permission_classes = [ModelPermissionOrOwn]
    owner_actions: set[str] = set()
    pagination_class = Pages
    queryset = Person.objects.none()
    lookup_field = "user"
    lookup_value_regex = "[0-9]+"

    def get_queryset(self):
        people = Person.objects.select_related("user").prefetch_related("user__teams")
        people = people.order_by("user_id")
        if may(self.request.user, Person, "view"):
            return people
        return people.filter(user=self.request.user)


class MembershipSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    team = serializers.PrimaryKeyRelatedField(queryset=Team.objects.all())
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all())


Membership = Team.members.through


class MembershipViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Who is in which team. Adding and removing members needs the team change permission;
    without the team view permission you see your own memberships."""

    serializer_class = MembershipSerializer
    permission_classes = [ModelPermissionOrOwn]
    permission_model = Team
    owner_actions: set[str] = set()
    action_permissions = {"create": "change", "destroy": "change"}
    pagination_class = Pages
    queryset = Membership.objects.none()

    def get_queryset(self):
        rows = Membership.objects.order_by("team_id", "user_id")
        query = self.request.query_params
        if query.get("team"):
            rows = rows.filter(team_id=_integer("team", query["team"]))
        if query.get("user"):
            rows = rows.filter(user_id=_integer("user", query["user"]))
        if may(self.request.user, Team, "view"):
            return rows
        return rows.filter(user=self.request.user)

    @extend_schema(
        parameters=[OpenApiParameter("team", int), OpenApiParameter("user", int)],
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def create(self, request, *args, **kwargs):
        data = MembershipSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        team, user = data.validated_data["team"], data.validated_data["user"]
        if team.members.filter(pk=user.pk).exists():
            raise ValidationError({"user": "Already a member of this team."})
        # Through the relation, so the policy cache and the audit log hear of it.
        team.members.add(user)
        row = Membership.objects.get(team=team, user=user)
        return Response(MembershipSerializer(row).data, status=status.HTTP_201_CREATED)

    @transaction.atomic
    def perform_destroy(self, instance):
        instance.team.members.remove(instance.user)
        # A default team the person left bills nothing to it any more (saved, not updated
        # in bulk, so the policy cache and the audit log hear of it).
        for person in Person.objects.filter(user=instance.user, default_team=instance.team):
            person.default_team = None
            person.save(update_fields=["default_team"])


class SignInSerializer(StrictModelSerializer):
    state = serializers.SerializerMethodField()

    class Meta:
        model = SignInToken
        fields = [
            "id", "person", "client", "kind", "family", "prefix", "state", "created_at",
            "expires_at", "used_at", "revoked_at", "revoked_reason",
        ]  # fmt: skip

    def get_state(self, token: SignInToken) -> str:
        if token.revoked_at is not None:
            return "revoked"
        return "live" if token.is_live else "expired"


class RevokedSerializer(StrictSerializer):
    revoked = serializers.IntegerField(help_text="tokens of the sign-in that were still live")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("person", int, description="user id"),
            OpenApiParameter("live", bool, description="true: only tokens still usable"),
        ]
    )
)
class SignInViewSet(viewsets.ReadOnlyModelViewSet):
    """Sign-in tokens (Claude Code's /login, ``llmproxy login``): listed and revoked, never
    shown (only a prefix is stored in the clear). Revoking one ends its whole sign-in (every
    token of its family). Your own, or everyone's with the sign-in token permissions."""

    serializer_class = SignInSerializer
    permission_classes = [ModelPermissionOrOwn]
    owner_actions = {"revoke"}
    action_permissions = {"revoke": "change"}
    pagination_class = Pages
    queryset = SignInToken.objects.none()

    def get_queryset(self):
        tokens = SignInToken.objects.order_by("-created_at", "-id")
        query = self.request.query_params
        if query.get("person"):
            tokens = tokens.filter(person_id=_integer("person", query["person"]))
        if query.get("live") == "true":
            tokens = tokens.live()
        elif query.get("live") not in (None, "", "false"):
            raise ValidationError({"live": "true or false"})
        if may(self.request.user, SignInToken, "view"):
            return tokens
        return tokens.filter(person=self.request.user)

    def is_own(self, token: SignInToken) -> bool:
        return token.person_id == self.request.user.pk

    @extend_schema(request=RevokeSerializer, responses={200: RevokedSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = self.get_object()
        data = RevokeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        reason = data.validated_data.get("reason") or f"revoked by {request.user.get_username()}"
        ended = signin.revoke_family(token.family, reason=reason)
        return Response({"revoked": ended})
