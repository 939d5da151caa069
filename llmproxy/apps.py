from django.apps import AppConfig


class LlmproxyConfig(AppConfig):
    name = "llmproxy"
    verbose_name = "Gateway"
    default_auto_field = "django.db.models.BigAutoField"
