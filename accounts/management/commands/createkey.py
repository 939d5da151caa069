from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import services
from accounts.models import BudgetPeriod, ReserveMode, Team
from llmproxy.core.commands import OpsCommand, comma_list, money, positive_int, timestamp


class Command(OpsCommand):
    help = "Create a virtual API key. The secret is printed alone on the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--owner", help="username of the key's owner")
        parser.add_argument("--team", help="name of the key's team")
        parser.add_argument("--models", type=comma_list, help="allowed model patterns")
        parser.add_argument("--endpoints", type=comma_list, help="allowed endpoint paths")
        parser.add_argument("--tools", type=comma_list, help="allowed hosted tools")
        parser.add_argument("--budget", help="spend limit in USD per period")
        parser.add_argument("--period", choices=BudgetPeriod.values, default=BudgetPeriod.MONTH)
        parser.add_argument(
            "--reserve", choices=ReserveMode.values, default=ReserveMode.WORST,
            help="what admission holds against the budget (see docs/operations.md)",
        )  # fmt: skip
        parser.add_argument("--rpm", type=int, help="requests per minute")
        parser.add_argument("--tpm", type=int, help="tokens per minute")
        parser.add_argument("--max-concurrent", type=int, help="concurrent requests")
        parser.add_argument("--expires", help="expiry, ISO 8601 (UTC when no offset is given)")

    def handle(self, *args, **options):
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("the key name must be 1 to 100 characters")
        expires_at = timestamp("--expires", options["expires"])
        if expires_at is not None and expires_at <= timezone.now():
            raise CommandError(f"--expires is in the past: {options['expires']}")
        try:
            key, secret = services.create_key(
                name=name,
                owner=self._owner(options["owner"]),
                team=self._team(options["team"]),
                allowed_models=options["models"],
                allowed_endpoints=options["endpoints"],
                allowed_tools=options["tools"],
                budget_usd=money("--budget", options["budget"]),
                budget_period=options["period"],
                reserve_mode=options["reserve"],
                rpm=positive_int("--rpm", options["rpm"]),
                tpm=positive_int("--tpm", options["tpm"]),
                max_concurrent=positive_int("--max-concurrent", options["max_concurrent"]),
                expires_at=expires_at,
            )
        except services.KeySecretMismatch as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Created key {key.name!r} (id {key.pk}, prefix {key.prefix})")
        self.stdout.write("The secret below is shown once; llmproxy keeps only its digest.")
        self.stdout.write(secret)

    def _owner(self, username: str | None):
        if username is None:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"--owner: no user named {username!r}")
        return user

    def _team(self, name: str | None) -> Team | None:
        if name is None:
            return None
        team = Team.objects.filter(name=name).first()
        if team is None:
            raise CommandError(f"--team: no team named {name!r}")
        return team
