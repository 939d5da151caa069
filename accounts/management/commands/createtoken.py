from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from accounts import services
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Create a management API token for a user. The token is printed alone on the last "
        "line of stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="the user the token acts as")
        parser.add_argument("--name", default="cli", help="what the token is for (default: cli)")

    def handle(self, *args, **options):
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters")
        username = options["username"]
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive: the API would refuse its token")
        try:
            token, secret = services.create_api_token(user=user, name=name)
        except services.KeySecretMismatch as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Created API token {token.name!r} for {username} (id {token.pk}, prefix "
            f"{token.prefix})"
        )
        self.stdout.write("The token below is shown once; llmproxy keeps only its digest.")
        self.stdout.write(secret)
