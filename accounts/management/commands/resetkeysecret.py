from __future__ import annotations

from django.core.management.base import CommandError

from accounts import services
from accounts.models import ApiKey, ApiToken
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Record this process's LLMPROXY_KEY_HMAC_SECRET (by default DJANGO_SECRET_KEY) as the "
        "one keys and API tokens are made with, after the secret was changed on purpose. "
        "Every key and token made with the old secret stops working."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--yes", action="store_true", help="confirm: keys made with the old secret stay dead"
        )

    def handle(self, *args, **options):
        if not options["yes"]:
            raise CommandError(
                "refusing without --yes: every key and API token made with the old secret "
                "stops working"
            )
        before = services.reset_key_secret()
        if before == "same":
            self.stdout.write("The key secret is already the recorded one; nothing changed.")
        elif before == "none":
            self.stdout.write("Recorded the key secret (none was recorded yet).")
        else:
            self.stdout.write(
                "Recorded the new key secret. Every key and API token made with the old secret "
                f"stopped working ({ApiKey.objects.count()} key(s), {ApiToken.objects.count()} "
                "token(s) in the database): rotate the keys and make new tokens."
            )
