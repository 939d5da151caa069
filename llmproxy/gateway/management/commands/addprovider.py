from __future__ import annotations

import argparse
import os

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from llmproxy.core.commands import OpsCommand, comma_list
from llmproxy.gateway import services
from llmproxy.gateway.models import ProviderKind
from llmproxy.gateway.targets import check_base_url


class Command(OpsCommand):
    help = "Create or update an upstream provider (its API key is stored encrypted)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=ProviderKind.values)
        parser.add_argument("--base-url", required=True)
        secret = parser.add_mutually_exclusive_group(required=True)
        secret.add_argument("--api-key", help="the provider's API key")
        secret.add_argument(
            "--api-key-env", metavar="VAR", help="read the API key from this environment variable"
        )
        parser.add_argument("--models", type=comma_list, help="model patterns it serves: a,b*")
        parser.add_argument(
            "--websockets",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="the provider serves the Responses API over a websocket (OpenAI does); "
            "Codex's websocket sessions then go to it directly instead of over HTTP",
        )

    def handle(self, *args, **options):
        try:
            base_url = check_base_url(options["base_url"])
        except ValidationError as exc:
            raise CommandError(f"--base-url {options['base_url']!r}: {exc.messages[0]}") from None
        if options["websockets"] and options["kind"] != "openai":
            raise CommandError("--websockets: only an openai provider serves Responses websockets")
        credential = options["api_key"]
        if options["api_key_env"]:
            credential = os.environ.get(options["api_key_env"], "")
            if not credential:
                raise CommandError(f"--api-key-env: {options['api_key_env']} is empty or unset")
        provider, created = services.upsert_provider(
            name=options["name"],
            kind=options["kind"],
            base_url=base_url,
            credential=credential,
            model_patterns=options["models"],
            websockets=options["websockets"],
        )
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} provider {provider.name} ({provider.kind}, {provider.base_url})")
