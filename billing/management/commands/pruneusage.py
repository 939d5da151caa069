from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError

from billing import services
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Delete raw usage events older than N days (default LLMPROXY_USAGE_RETENTION_DAYS); "
        "the daily rollups, and so every spend total, stay."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None)

    def handle(self, *args, **options):
        days = options["days"] or settings.LLMPROXY_USAGE_RETENTION_DAYS
        if not days or days < 1:
            raise CommandError("no retention: pass --days N or set LLMPROXY_USAGE_RETENTION_DAYS")
        deleted = services.prune_usage(days=days)
        self.stdout.write(f"Usage: {deleted} raw events older than {days} days deleted")
