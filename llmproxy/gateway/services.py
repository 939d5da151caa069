"""State changes for providers and routes."""

from __future__ import annotations

from django.db import transaction

from llmproxy.gateway.models import ModelRoute, Provider


@transaction.atomic
def upsert_provider(
    *,
    name: str,
    kind: str,
    base_url: str,
    credential: str,
    model_patterns: list[str] | None = None,
    extra_headers: dict | None = None,
    websockets: bool | None = None,
) -> tuple[Provider, bool]:
    """Create the provider or update it in place; routes for ``model_patterns`` are added."""
    provider = Provider.objects.filter(name=name).first()
    created = provider is None
    if created:
        provider = Provider(name=name)
    provider.kind = kind
    provider.base_url = base_url.rstrip("/")
    provider.credential = credential
    if extra_headers is not None:
        provider.extra_headers = extra_headers
    if websockets is not None:
        provider.websockets = websockets
    provider.save()
    for pattern in model_patterns or []:
        ModelRoute.objects.get_or_create(provider=provider, pattern=pattern)
    return provider, created
