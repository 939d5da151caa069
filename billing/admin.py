from __future__ import annotations

from django.contrib import admin

from billing.models import BudgetAlert, Price, UsageDeadLetter, UsageEvent


class PriceAdmin(admin.ModelAdmin):
    list_display = [
        "model_pattern",
        "provider_kind",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_5m_per_mtok",
        "long_context_threshold",
        "updated_at",
    ]
    list_filter = ["provider_kind"]
    search_fields = ["model_pattern"]


class UsageEventAdmin(admin.ModelAdmin):
    """The ledger is append-only: rows are read here, never edited."""

    list_display = [
        "created_at",
        "api_key",
        "team",
        "model",
        "client",
        "kind",
        "status",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "latency_ms",
        "partial",
    ]
    list_filter = [
        "created_at",
        ("api_key", admin.RelatedOnlyFieldListFilter),
        ("team", admin.RelatedOnlyFieldListFilter),
        "model",
        "client",
        "kind",
        "status",
        "partial",
    ]
    search_fields = ["request_id", "model", "api_key__name", "api_key__prefix", "session_id"]
    date_hierarchy = "created_at"
    list_select_related = ["api_key", "team"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


admin.site.register(Price, PriceAdmin)
admin.site.register(UsageEvent, UsageEventAdmin)


class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = [
        "created_at", "subject", "api_key", "team", "period", "threshold", "spent_usd",
        "limit_usd", "delivered_at", "attempts", "last_error",
    ]  # fmt: skip
    list_filter = ["threshold", "period", ("delivered_at", admin.EmptyFieldListFilter)]
    search_fields = ["subject", "api_key__name", "team__name"]
    list_select_related = ["api_key", "team"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


admin.site.register(BudgetAlert, BudgetAlertAdmin)


class UsageDeadLetterAdmin(admin.ModelAdmin):
    """Usage events the ledger could not store: read here, never edited (docs/operations.md,
    "Dead letters")."""

    list_display = ["created_at", "request_id", "error"]
    search_fields = ["request_id", "error"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "request_id", "data", "error"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


admin.site.register(UsageDeadLetter, UsageDeadLetterAdmin)
