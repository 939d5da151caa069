"""The Celery app: ``celery -A llmproxy worker`` and ``celery -A llmproxy beat``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")

app = Celery("llmproxy")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
