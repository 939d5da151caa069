from celery import shared_task

from billing import budgets
from llmproxy.gateway import limits


@shared_task
def reconcile_counters() -> int:
    """Every budget's Redis spend counter against the ledger (beat, scaled mode)."""
    return limits.reconcile([budget for budget, _ in budgets.holders()])
