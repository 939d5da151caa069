"""State changes for providers and routes."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from llmproxy.gateway.kinds import kind_of
from llmproxy.gateway.models import ModelRoute, Provider
from llmproxy.gateway.targets import check_base_url


class InvalidProvider(ValueError):
    """What is wrong with a provider's credential or options (never the credential itself)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # "credential" or "options"


def check_provider(*, kind: str, credential: str, options: dict) -> dict:
    """The options as the kind needs them; InvalidProvider says what is wrong."""
    found = kind_of(kind)
    if found.credential_required and not credential:
        raise InvalidProvider("credential", f"A {kind} provider needs its credential.")
    try:
        if credential:
            found.check_credential(credential)
    except ValueError as exc:
        raise InvalidProvider("credential", str(exc)) from None
    try:
        checked = found.check_options(dict(options))
    except ValueError as exc:
        raise InvalidProvider("options", str(exc)) from None
    if "authority" in checked:  # a token endpoint the credential is sent to
        try:
            check_base_url(checked["authority"])
        except ValidationError as exc:
            raise InvalidProvider("options", f"authority: {exc.messages[0]}") from None
    return checked


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
    options: dict | None = None,
) -> tuple[Provider, bool]:
    """Create the provider or update it in place; routes for ``model_patterns`` are added.
    ValueError when the kind cannot work with ``credential`` and ``options``."""
    provider = Provider.objects.filter(name=name).first()
    created = provider is None
    if created:
        provider = Provider(name=name)
    if options is None:
        options = provider.options or {}
    options = check_provider(kind=kind, credential=credential, options=options)
    provider.kind = kind
    provider.options = options
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
