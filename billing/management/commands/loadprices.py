from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from billing import services
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = "Create or update prices from a JSON file (default: the one shipped in billing/)."

    def add_arguments(self, parser):
        parser.add_argument("--file", type=Path, default=services.PRICES_FILE)

    def handle(self, *args, **options):
        try:
            created, updated = services.load_prices(options["file"])
        except services.PriceFileError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Prices: {created} created, {updated} updated from {options['file']}")
