from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and usage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import audit
        from billing.models import Price
        from billing.services import add_shipped_prices_after_migrate

        audit.track(Price)

        # After every migrate: the shipped price rows that are missing (never overwriting).
        post_migrate.connect(
            add_shipped_prices_after_migrate, sender=self, dispatch_uid="billing-shipped-prices"
        )
