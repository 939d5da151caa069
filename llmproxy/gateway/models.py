"""Upstream providers and the routes from public model names to them."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from llmproxy.core import crypto


class ProviderKind(models.TextChoices):
    """How the gateway reaches a provider: its API, its authentication, its request shape."""

    ANTHROPIC = "anthropic", "Anthropic Messages API"
    OPENAI = "openai", "OpenAI Responses / Chat Completions API"
    BEDROCK = "bedrock", "AWS Bedrock (Claude, Anthropic Messages)"
    VERTEX = "vertex", "Google Vertex AI (Claude, Anthropic Messages)"
    AZURE = "azure", "Azure OpenAI / Microsoft Foundry (Responses, Chat)"


# The wire protocol clients speak to the gateway for each provider kind.
PROTOCOL_OF = {
    ProviderKind.ANTHROPIC: "anthropic",
    ProviderKind.OPENAI: "openai",
    ProviderKind.BEDROCK: "anthropic",
    ProviderKind.VERTEX: "anthropic",
    ProviderKind.AZURE: "openai",
}


class Provider(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    base_url = models.URLField(
        max_length=500, help_text="For example https://api.anthropic.com (no /v1)."
    )
    # Fernet token; the plaintext never leaves this model except towards the upstream.
    credential_encrypted = models.TextField(blank=True, editable=False)
    extra_headers = models.JSONField(
        default=dict, blank=True, help_text="Headers added to every upstream request."
    )
    websockets = models.BooleanField(
        default=False,
        help_text="OpenAI and Azure kinds: the provider serves the Responses API over a "
        "websocket at GET {base URL}/v1/responses (OpenAI's does; Azure: "
        "{base URL}/openai/v1/responses). Codex's websocket sessions then hold one upstream "
        "socket each; otherwise each turn is bridged to HTTP streaming.",
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text='What the kind needs besides the URL and credential, e.g. {"region": '
        '"eu-central-1"} (Bedrock), {"project": "p", "region": "europe-west1"} (Vertex), '
        '{"api_version": "2025-04-01-preview"} (Azure); docs/providers.md.',
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Provider {self.name!r} {self.kind} {self.base_url}>"

    def save(self, *args, **kwargs) -> None:
        """A provider re-pointed elsewhere (another base URL, or for Azure another Entra
        authority) keeps no credential it was not given again: the stored one was meant
        for the old address, and would be sent to the new."""
        stored_target, stored_credential = getattr(self, "_stored", (None, None))
        if stored_target is not None and self._target() != stored_target:
            if self.credential_encrypted == stored_credential:
                self.credential_encrypted = ""
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "credential_encrypted"}
        super().save(*args, **kwargs)
        self._stored = (self._target(), self.credential_encrypted)

    @classmethod
    def from_db(cls, db, field_names, values):
        provider = super().from_db(db, field_names, values)
        fields = provider.__dict__
        if "base_url" in fields and "options" in fields:
            provider._stored = (provider._target(), fields.get("credential_encrypted"))
        return provider

    def _target(self) -> tuple[str, str | None]:
        """Where the credential goes: the base URL, and a token endpoint if the kind has one."""
        options = self.options if isinstance(self.options, dict) else {}
        return self.base_url, options.get("authority")

    @property
    def protocol(self) -> str:
        return PROTOCOL_OF[self.kind]

    @property
    def credential(self) -> str:
        return crypto.decrypt(self.credential_encrypted) if self.credential_encrypted else ""

    @credential.setter
    def credential(self, value: str) -> None:
        self.credential_encrypted = crypto.encrypt(value) if value else ""

    @property
    def has_credential(self) -> bool:
        return bool(self.credential_encrypted)


class ModelRoute(models.Model):
    """A public model pattern served by a provider, optionally under another upstream name."""

    pattern = models.CharField(
        max_length=200, help_text='Public model name or pattern, e.g. "claude-*" or "gpt-5*".'
    )
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="routes")
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="Model name sent upstream. Empty: unchanged."
    )
    priority = models.IntegerField(
        default=100,
        help_text="Lower goes first. Routes of the same priority share the traffic by weight; "
        "the others are tried in turn when one fails before its first byte.",
    )
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of the traffic among routes of the same priority."
    )
    teams = models.ManyToManyField(
        "accounts.Team",
        blank=True,
        related_name="model_routes",
        help_text="Only calls billed to these teams take this route. Empty: every call.",
    )
    people = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="model_routes",
        help_text="Only these people's calls take this route. Empty: everyone's.",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "pattern"]
        constraints = [
            models.UniqueConstraint(fields=["pattern", "provider"], name="unique_route_pattern")
        ]

    def __str__(self) -> str:
        target = self.upstream_model or "same name"
        return f"{self.pattern} → {self.provider} ({target})"
