from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The web side: management API, dashboard, health; no models of its own."""

    name = "llmproxy.console"
    label = "console"
    verbose_name = "Console"
