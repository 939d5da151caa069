"""Upstream providers and the routes from public model names to them."""

from __future__ import annotations

from django.db import models

from llmproxy.core import crypto


class ProviderKind(models.TextChoices):
    ANTHROPIC = "anthropic", "Anthropic Messages API"
    OPENAI = "openai", "OpenAI Responses / Chat Completions API"


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
        help_text="OpenAI kind only: the provider serves the Responses API over a websocket at "
        "GET {base URL}/v1/responses (OpenAI's does). Codex's websocket sessions then hold one "
        "upstream socket each; otherwise each turn is bridged to HTTP streaming.",
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
    priority = models.IntegerField(default=100, help_text="Lower wins when several patterns match.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "pattern"]
        constraints = [
            models.UniqueConstraint(fields=["pattern", "provider"], name="unique_route_pattern")
        ]

    def __str__(self) -> str:
        target = self.upstream_model or "same name"
        return f"{self.pattern} → {self.provider} ({target})"
