from celery import shared_task

from billing import alerts, services

# The database down or restarting: try the batch again later, with backoff (a replay inserts
# nothing twice). Any other error is a row's and is dead-lettered by the service.


@shared_task(
    acks_late=True,
    autoretry_for=services.TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=False,
    max_retries=None,
)
def record_usage_batch(events: list[dict]) -> int:
    return services.record_usage_events(events)


@shared_task
def prune_usage() -> int:
    return services.prune_usage()


@shared_task
def check_budget_alerts() -> int:
    created = alerts.check_budget_alerts()
    for alert_id in created:
        deliver_budget_alert.delay(alert_id)
    return len(created)


@shared_task(bind=True, acks_late=True, max_retries=10)
def deliver_budget_alert(self, alert_id: int) -> bool:
    if not alerts.deliver(alert_id):
        # exponential backoff: 30 s, 1 min, 2 min, ... capped at an hour
        raise self.retry(countdown=min(3600, 30 * 2**self.request.retries))
    return True
