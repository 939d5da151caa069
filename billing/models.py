"""Prices and the durable usage ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models

from accounts.models import ApiKey, Team

if TYPE_CHECKING:
    from billing.budgets import Budget

PER_MTOK = {"max_digits": 12, "decimal_places": 6}


class Price(models.Model):
    """USD per million tokens for the models matching ``model_pattern``.

    The most specific matching pattern wins (an exact name beats ``claude-opus-4*``). Above
    ``long_context_threshold`` input tokens a request is billed entirely at the long-context
    rates, as the providers do.
    """

    model_pattern = models.CharField(max_length=200)
    provider = models.ForeignKey(
        "llmproxy.Provider",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="prices",
        help_text="This provider's own price for the models (a cloud's price can differ); "
        "empty: the price on every provider of the kind.",
    )
    provider_kind = models.CharField(
        max_length=16,
        blank=True,
        help_text="The provider kind this price is for (anthropic, openai); empty: any kind.",
    )
    input_per_mtok = models.DecimalField(**PER_MTOK)
    output_per_mtok = models.DecimalField(**PER_MTOK)
    cache_write_5m_per_mtok = models.DecimalField(**PER_MTOK, default=Decimal(0))
    cache_write_1h_per_mtok = models.DecimalField(**PER_MTOK, default=Decimal(0))
    cache_read_per_mtok = models.DecimalField(**PER_MTOK, default=Decimal(0))
    long_context_threshold = models.PositiveIntegerField(null=True, blank=True)
    long_input_per_mtok = models.DecimalField(**PER_MTOK, null=True, blank=True)
    long_output_per_mtok = models.DecimalField(**PER_MTOK, null=True, blank=True)
    long_cache_write_5m_per_mtok = models.DecimalField(**PER_MTOK, null=True, blank=True)
    long_cache_write_1h_per_mtok = models.DecimalField(**PER_MTOK, null=True, blank=True)
    long_cache_read_per_mtok = models.DecimalField(**PER_MTOK, null=True, blank=True)
    tool_prices = models.JSONField(
        default=dict, blank=True, help_text='USD per call by hosted tool, e.g. {"web_search": 0.01}'
    )
    container_prices = models.JSONField(
        default=dict, blank=True, help_text='USD per container by memory size, e.g. {"1g": 0.03}'
    )
    default_max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_pattern", "provider_kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider_kind", "model_pattern"],
                condition=models.Q(provider__isnull=True),
                name="one_price_per_kind_and_pattern",
            ),
            models.UniqueConstraint(
                fields=["provider", "model_pattern"],
                condition=models.Q(provider__isnull=False),
                name="one_price_per_provider_and_pattern",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.model_pattern} ({self.provider_kind})"
            if self.provider_kind
            else (self.model_pattern)
        )


class UsageKind(models.TextChoices):
    TURN = "turn", "Turn"
    COMPACTION = "compaction", "Compaction"
    COUNT = "count", "Token count"
    TITLE = "title", "Title"
    OTHER = "other", "Other"


class UsageEvent(models.Model):
    """One upstream call, written by Celery in batches; a unique ``request_id`` makes a
    replayed batch insert nothing."""

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_events"
    )
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_events"
    )
    person = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_events",
        help_text="Whose key or sign-in made the call.",
    )
    credential = models.CharField(
        max_length=40, blank=True, help_text='"key", or the sign-in it came from ("claude_code").'
    )
    # The gateway's Provider, by name: billing sits below the gateway and never imports it.
    provider = models.ForeignKey(
        "llmproxy.Provider",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_events",
    )
    model = models.CharField(max_length=200, db_index=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=200)
    client = models.CharField(max_length=40, blank=True, db_index=True)
    session_id = models.CharField(max_length=100, blank=True, db_index=True)
    agent_id = models.CharField(
        max_length=100, blank=True, help_text="A subagent (Claude Code) or thread (Codex)."
    )
    status = models.PositiveSmallIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=UsageKind.choices, default=UsageKind.TURN)
    attempts = models.PositiveSmallIntegerField(
        default=1, help_text="Upstream attempts the call took (failover, overload retries)."
    )
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(
        default=0, help_text="All cache writes, 5-minute and 1-hour."
    )
    cache_write_1h_tokens = models.PositiveBigIntegerField(
        default=0, help_text="The part of the cache writes with a 1-hour lifetime."
    )
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    tool_calls = models.JSONField(default=dict, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    partial = models.BooleanField(default=False)
    estimated = models.BooleanField(
        default=False,
        help_text="Usage estimated by the gateway (the provider's figure was never read).",
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"], name="usage_key_time"),
            models.Index(fields=["team", "created_at"], name="usage_team_time"),
            models.Index(fields=["person", "created_at"], name="usage_person_time"),
            # The dashboard's recent errors: rare rows, found without scanning the table.
            models.Index(
                fields=["-created_at", "-id"],
                condition=~models.Q(error="") | models.Q(status__gte=400),
                name="usage_errors_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} ${self.cost_usd}"

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + (self.cache_write_tokens)
        )


class UsageDailyQuerySet(models.QuerySet):
    def period(self, budget: Budget, now: datetime) -> UsageDailyQuerySet:
        """The budget holder's rows in the period that contains ``now`` (periods start at a
        UTC midnight, so whole days make them up)."""
        start = budget.start(now).astimezone(UTC).date()
        return self.filter(day__gte=start, **{budget.owner_column: budget.owner_id})

    def spent(self, budget: Budget, now: datetime) -> Decimal:
        """What the budget's holder spent in the period that contains ``now``.

        The one place period spend is computed: the limiter rebuilds lost counters from it,
        alerts, the API and the dashboard report it.
        """
        total = self.period(budget, now).aggregate(total=models.Sum("cost_usd"))["total"]
        return total or Decimal(0)


class UsageDaily(models.Model):
    """Usage summed per UTC day and per (key, person, team, model, provider, client, kind):
    what every spend query reads instead of the raw events (docs/operations.md, "The
    ledger").

    The usage writer adds to it in the transaction that inserts the raw rows, for the rows it
    inserted only, so a replayed batch adds nothing. Ids are plain numbers with 0 for none (a
    unique key needs values, not NULLs) and no foreign key: a deleted key's spend stays.
    """

    day = models.DateField()
    api_key_id = models.BigIntegerField(default=0)
    person_id = models.BigIntegerField(default=0)
    team_id = models.BigIntegerField(default=0)
    provider_id = models.BigIntegerField(default=0)
    model = models.CharField(max_length=200)
    client = models.CharField(max_length=40, blank=True)
    kind = models.CharField(max_length=16, default=UsageKind.TURN)
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))

    objects = UsageDailyQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "usage by day"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "api_key_id", "person_id", "team_id", "provider_id", "model",
                        "client", "kind"],
                name="one_usage_row_per_day_and_grain",
            )
        ]  # fmt: skip
        indexes = [
            models.Index(fields=["api_key_id", "day"], name="usage_daily_key"),
            models.Index(fields=["person_id", "day"], name="usage_daily_person"),
            models.Index(fields=["team_id", "day"], name="usage_daily_team"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model} ${self.cost_usd}"


class UsageDeadLetter(models.Model):
    """A usage event the ledger could not store, kept with its raw data and the error.

    The writer stores a batch row by row when the batch fails, so one such event never takes
    the others with it (docs/operations.md, "Dead letters"). Read-only in the admin.
    """

    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    data = models.TextField(help_text="The event as it reached the writer (JSON, ASCII-escaped).")
    error = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.request_id or '(no request id)'}: {self.error[:80]}"


class BudgetAlert(models.Model):
    """Spend crossed a threshold of a budget: once per subject, period and threshold."""

    subject = models.CharField(max_length=40, help_text='"key:<id>" or "team:<id>"')
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE)
    period = models.CharField(max_length=24)
    threshold = models.PositiveSmallIntegerField(help_text="percent of the budget")
    spent_usd = models.DecimalField(max_digits=14, decimal_places=8)
    limit_usd = models.DecimalField(max_digits=12, decimal_places=4)
    webhook_url = models.URLField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject", "period", "threshold"], name="one_alert_per_threshold"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subject} reached {self.threshold}% of ${self.limit_usd} ({self.period})"
