from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from accounts.models import ApiKey, ApiToken, Team
from billing.models import Price, UsageEvent
from llmproxy.gateway import services as gateway_services
from llmproxy.gateway.models import ModelRoute, Provider
from llmproxy.gateway.targets import check_base_url


class StrictInput:
    """Input may name only the serializer's writable fields.

    DRF drops fields it does not know and read-only fields without a word, so a misspelt
    limit (``requests_per_minute`` for ``rpm``) would be accepted and do nothing. Here each
    such field is a 400 that names it, together with any other field errors.
    """

    def to_internal_value(self, data):
        refused = self.refused_fields(data) if isinstance(data, Mapping) else {}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if refused and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**refused, **exc.detail}) from None
            raise
        if refused:
            raise serializers.ValidationError(refused)
        return value

    def refused_fields(self, data: Mapping) -> dict[str, list[str]]:
        writable = [name for name, field in self.fields.items() if not field.read_only]
        refused = {}
        for name in data:
            field = self.fields.get(name)
            if field is not None and field.read_only:
                refused[name] = ["This field is read-only; it cannot be written."]
            elif field is None:
                accepted = ", ".join(writable) if writable else "no fields"
                refused[name] = [f"Unknown field. This endpoint accepts: {accepted}."]
        return refused


class StrictSerializer(StrictInput, serializers.Serializer):
    pass


class StrictModelSerializer(StrictInput, serializers.ModelSerializer):
    pass


class StrictInputScheme(OpenApiSerializerExtension):
    """In the schema, request bodies say what the code does: no other properties."""

    target_class = StrictInput
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request" and schema.get("type") == "object":
            schema["additionalProperties"] = False
        return schema


class ObjectField(serializers.JSONField):
    """A JSON object (never null, a list or a scalar)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Expected a JSON object.")
        return value


class HeadersField(ObjectField):
    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise serializers.ValidationError("Header names and values must be strings.")
        return value


class ApiKeySerializer(StrictModelSerializer):
    metadata = ObjectField(required=False)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False
    )
    allowed_endpoints = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False
    )
    allowed_tools = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False
    )
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=Decimal(0), allow_null=True, required=False
    )
    state = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "name", "prefix", "owner", "team", "state", "created_at", "expires_at",
            "revoked_at", "revoked_reason", "last_used_at", "allowed_models",
            "allowed_endpoints", "allowed_tools", "allow_background", "rpm", "tpm",
            "max_concurrent", "budget_usd", "budget_period", "reserve_mode",
            "alert_webhook_url", "tags", "metadata",
        ]  # fmt: skip
        read_only_fields = ["prefix", "created_at", "revoked_at", "revoked_reason", "last_used_at"]

    def get_state(self, key: ApiKey) -> str:
        if key.is_revoked:
            return "revoked"
        return "expired" if key.is_expired() else "active"


class NewKeySerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown this once.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class SecretSerializer(StrictSerializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    key = serializers.CharField(help_text="The new secret, shown this once.")


class NoInputSerializer(StrictSerializer):
    """For actions that take no input: any field sent is refused."""


class RevokeSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True)


def layer_patterns() -> serializers.ListField:
    """A person's or team's policy list: null means the layer does not restrict."""
    return serializers.ListField(
        child=serializers.CharField(max_length=200), allow_null=True, required=False
    )


class TeamSerializer(StrictModelSerializer):
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=Decimal(0), allow_null=True, required=False
    )
    allowed_models = layer_patterns()
    allowed_endpoints = layer_patterns()
    allowed_tools = layer_patterns()

    class Meta:
        model = Team
        fields = [
            "id", "name", "members", "budget_usd", "budget_period", "alert_webhook_url",
            "allowed_models", "allowed_endpoints", "allowed_tools", "rpm", "tpm",
            "max_concurrent", "created_at",
        ]  # fmt: skip


class UserSerializer(StrictModelSerializer):
    class Meta:
        model = get_user_model()
        fields = [
            "id", "username", "email", "first_name", "last_name", "is_staff", "is_superuser",
            "is_active",
        ]  # fmt: skip


SUPERUSER_FLAGS = ("is_staff", "is_superuser")


def check_user_flags(actor, user, changes: dict) -> None:
    """Staff and superuser flags, and a superuser's account, are a superuser's to change:
    with them a staff member with the user permissions could make themselves anything."""
    if actor.is_superuser:
        return
    if user is not None and user.is_superuser:
        raise PermissionDenied("Only a superuser may change or delete a superuser's account.")
    for flag in SUPERUSER_FLAGS:
        if flag in changes and bool(changes[flag]) != bool(getattr(user, flag, False)):
            raise PermissionDenied(f"Only a superuser may set {flag}.")


class ProviderSerializer(StrictModelSerializer):
    credential = serializers.CharField(
        write_only=True, required=False, help_text="Write-only: stored encrypted, never read."
    )
    extra_headers = HeadersField(required=False)
    options = ObjectField(
        required=False, help_text="What the kind needs: region, project, api_version, ..."
    )
    has_credential = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = [
            "id", "name", "kind", "base_url", "credential", "has_credential", "extra_headers",
            "options", "websockets", "enabled", "created_at", "updated_at",
        ]  # fmt: skip

    def validate_base_url(self, value: str) -> str:
        try:
            return check_base_url(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    def validate(self, attrs):
        instance = self.instance
        if (
            instance is not None
            and not attrs.get("credential")
            and "base_url" in attrs
            and attrs["base_url"] != instance.base_url.rstrip("/")
            and instance.has_credential
        ):
            raise serializers.ValidationError(
                {
                    "credential": "The base URL changed: send the API key for the new address "
                    "too (the stored key is cleared, never sent to a new address)."
                }
            )
        kind = attrs.get("kind", instance.kind if instance else "")
        credential = attrs.get("credential") or (instance.credential if instance else "")
        options = attrs.get("options", instance.options if instance else {})
        try:
            attrs["options"] = gateway_services.check_provider(
                kind=kind, credential=credential, options=options or {}
            )
        except gateway_services.InvalidProvider as exc:
            raise serializers.ValidationError({exc.field: str(exc)}) from None
        return attrs

    def _save(self, provider: Provider, validated: dict) -> Provider:
        credential = validated.pop("credential", None)
        for name, value in validated.items():
            setattr(provider, name, value)
        if credential:
            provider.credential = credential
        provider.save()
        return provider

    def create(self, validated_data):
        return self._save(Provider(), validated_data)

    def update(self, instance, validated_data):
        return self._save(instance, validated_data)


class ModelRouteSerializer(StrictModelSerializer):
    class Meta:
        model = ModelRoute
        fields = ["id", "pattern", "provider", "upstream_model", "priority", "enabled"]


class PriceSerializer(StrictModelSerializer):
    tool_prices = ObjectField(required=False)
    container_prices = ObjectField(required=False)

    class Meta:
        model = Price
        fields = "__all__"


class UsageEventSerializer(StrictModelSerializer):
    class Meta:
        model = UsageEvent
        fields = [
            "id", "request_id", "created_at", "api_key", "team", "provider", "model",
            "upstream_model", "endpoint", "client", "session_id", "status", "kind",
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "cache_write_1h_tokens", "reasoning_tokens", "tool_calls", "cost_usd",
            "latency_ms", "ttft_ms", "partial", "error",
        ]  # fmt: skip


class SpendRowSerializer(StrictSerializer):
    group = serializers.CharField(allow_null=True)
    name = serializers.CharField(
        allow_null=True, help_text="by=key: the key's name; by=team: the team's; else null"
    )
    prefix = serializers.CharField(allow_null=True, help_text="by=key: the key's prefix")
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=18, decimal_places=8)


class TokenSerializer(StrictModelSerializer):
    user = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.all(),
        required=False,
        help_text="Whom the token acts as: you unless set (someone else: superusers only).",
    )

    class Meta:
        model = ApiToken
        fields = ["id", "name", "user", "prefix", "created_at", "last_used_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at"]


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret, shown this once.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class BudgetStateSerializer(StrictSerializer):
    scope = serializers.CharField()
    period = serializers.CharField()
    limit_usd = serializers.DecimalField(max_digits=12, decimal_places=4)
    spent_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
    remaining_usd = serializers.DecimalField(max_digits=18, decimal_places=8)


class MeSerializer(StrictSerializer):
    key = ApiKeySerializer()
    budgets = BudgetStateSerializer(many=True)
    spent_today_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
