from __future__ import annotations

import time

from billing import generate
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Generate synthetic usage events (and their daily rollups) at volume, for the ledger's "
        "scale test and bench/ledger.py. Never on a production database."
    )

    def add_arguments(self, parser):
        parser.add_argument("--events", type=int, required=True)
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--keys", type=int, default=100)
        parser.add_argument("--teams", type=int, default=10)
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args, **options):
        started = time.monotonic()
        generate.generate(events=options["events"], days=options["days"], keys=options["keys"],
                          teams=options["teams"], seed=options["seed"])  # fmt: skip
        seconds = time.monotonic() - started
        self.stdout.write(f"Usage: {options['events']} events generated in {seconds:.1f} s")
