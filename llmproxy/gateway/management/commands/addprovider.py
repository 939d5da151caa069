from __future__ import annotations

import argparse
import json
import os

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from llmproxy.core.commands import OpsCommand, comma_list
from llmproxy.gateway import services
from llmproxy.gateway.models import ProviderKind
from llmproxy.gateway.targets import check_base_url


def kind_options(pairs: list[str]) -> dict:
    """NAME=VALUE pairs; a value that is JSON (true, ["a"], 3) is taken as JSON."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--option: {pair!r} is not NAME=VALUE")
        try:
            found[name] = json.loads(value)
        except ValueError:
            found[name] = value
    return found


class Command(OpsCommand):
    help = "Create or update an upstream provider (its API key is stored encrypted)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=ProviderKind.values)
        parser.add_argument("--base-url", required=True)
        secret = parser.add_mutually_exclusive_group()
        secret.add_argument("--api-key", help="the provider's API key (its credential)")
        secret.add_argument(
            "--api-key-env", metavar="VAR", help="read the API key from this environment variable"
        )
        secret.add_argument(
            "--credential-file", metavar="PATH",
            help="read the credential from this file (a Vertex service account's JSON key)",
        )  # fmt: skip
        parser.add_argument(
            "--option", action="append", default=[], metavar="NAME=VALUE",
            help="a kind option (repeatable): region=eu-central-1, project=p, "
            "api_version=2025-04-01-preview, auth=entra; docs/providers.md",
        )  # fmt: skip
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
        if options["websockets"] and options["kind"] not in ("openai", "azure"):
            raise CommandError(
                "--websockets: only an openai provider (or an azure one) serves Responses "
                "websockets"
            )
        credential = options["api_key"] or ""
        if options["api_key_env"]:
            credential = os.environ.get(options["api_key_env"], "")
            if not credential:
                raise CommandError(f"--api-key-env: {options['api_key_env']} is empty or unset")
        if options["credential_file"]:
            try:
                with open(options["credential_file"], encoding="utf-8") as file:
                    credential = file.read().strip()
            except OSError as exc:
                raise CommandError(f"--credential-file: {exc.strerror}") from None
        try:
            provider, created = services.upsert_provider(
                name=options["name"],
                kind=options["kind"],
                base_url=base_url,
                credential=credential,
                model_patterns=options["models"],
                websockets=options["websockets"],
                options=kind_options(options["option"]) if options["option"] else None,
            )
        except services.InvalidProvider as exc:
            flag = "--option" if exc.field == "options" else "the credential"
            raise CommandError(f"{flag}: {exc}") from None
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} provider {provider.name} ({provider.kind}, {provider.base_url})")
