from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "llmproxy.gateway"
    # The app label the tables and migrations were made under: kept so nothing is renamed.
    label = "llmproxy"
    verbose_name = "Gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import audit
        from llmproxy.gateway import signals  # noqa: F401 - connects policy invalidation
        from llmproxy.gateway.models import ModelRoute, Provider

        audit.track(Provider, secret={"credential_encrypted"})
        audit.track(ModelRoute, m2m=["teams", "people"])
