from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from rest_framework import serializers

from accounts.models import ApiKey, ApiToken, Team
from billing.models import Price, UsageEvent
from llmproxy.gateway.models import ModelRoute, Provider


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


class ApiKeySerializer(serializers.ModelSerializer):
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


class SecretSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    key = serializers.CharField(help_text="The new secret, shown this once.")


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True)


class TeamSerializer(serializers.ModelSerializer):
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=Decimal(0), allow_null=True, required=False
    )

    class Meta:
        model = Team
        fields = [
            "id", "name", "members", "budget_usd", "budget_period", "alert_webhook_url",
            "created_at",
        ]  # fmt: skip


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = get_user_model()
        fields = ["id", "username", "email", "first_name", "last_name", "is_staff", "is_active"]


class ProviderSerializer(serializers.ModelSerializer):
    credential = serializers.CharField(
        write_only=True, required=False, help_text="Write-only: stored encrypted, never read."
    )
    extra_headers = HeadersField(required=False)
    has_credential = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = [
            "id", "name", "kind", "base_url", "credential", "has_credential", "extra_headers",
            "websockets", "enabled", "created_at", "updated_at",
        ]  # fmt: skip

    def validate(self, attrs):
        if self.instance is None and not attrs.get("credential"):
            raise serializers.ValidationError({"credential": "A new provider needs its API key."})
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


class ModelRouteSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelRoute
        fields = ["id", "pattern", "provider", "upstream_model", "priority", "enabled"]


class PriceSerializer(serializers.ModelSerializer):
    tool_prices = ObjectField(required=False)
    container_prices = ObjectField(required=False)

    class Meta:
        model = Price
        fields = "__all__"


class UsageEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageEvent
        fields = [
            "id", "request_id", "created_at", "api_key", "team", "provider", "model",
            "upstream_model", "endpoint", "client", "session_id", "status", "kind",
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "cache_write_1h_tokens", "reasoning_tokens", "tool_calls", "cost_usd",
            "latency_ms", "ttft_ms", "partial", "error",
        ]  # fmt: skip


class SpendRowSerializer(serializers.Serializer):
    group = serializers.CharField(allow_null=True)
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=18, decimal_places=8)


class TokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at"]


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret, shown this once.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class BudgetStateSerializer(serializers.Serializer):
    scope = serializers.CharField()
    period = serializers.CharField()
    limit_usd = serializers.DecimalField(max_digits=12, decimal_places=4)
    spent_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
    remaining_usd = serializers.DecimalField(max_digits=18, decimal_places=8)


class MeSerializer(serializers.Serializer):
    key = ApiKeySerializer()
    budgets = BudgetStateSerializer(many=True)
    spent_today_usd = serializers.DecimalField(max_digits=18, decimal_places=8)
