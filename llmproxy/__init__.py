"""llmproxy: an LLM access-management gateway."""

from llmproxy.celery import app as celery_app

__all__ = ["celery_app"]
