from __future__ import annotations

from billing import spool
from llmproxy.core.commands import OpsCommand


class Command(OpsCommand):
    help = (
        "Write the usage events spooled at a shutdown (LLMPROXY_USAGE_SPOOL_DIR) to the "
        "ledger; an event already recorded is skipped."
    )

    def handle(self, *args, **options):
        files = len(spool.pending())
        written = spool.replay()
        self.stdout.write(f"Usage spool: {written} events recorded from {files} files")
