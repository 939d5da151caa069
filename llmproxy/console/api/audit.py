"""GET /api/audit/: the audit log, read-only (accounts.audit writes it)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError

from accounts.models import AuditAction, AuditEntry, AuditVia
from llmproxy.console.api.permissions import ModelPermission
from llmproxy.console.api.serializers import StrictModelSerializer
from llmproxy.console.api.views import Pages, _integer, _moment, _text


class AuditEntrySerializer(StrictModelSerializer):
    object_type = serializers.SerializerMethodField(help_text='e.g. "accounts.apikey"')
    changes = serializers.DictField(
        child=serializers.DictField(), help_text='{"field": {"old": ..., "new": ...}}'
    )

    class Meta:
        model = AuditEntry
        fields = [
            "id", "at", "actor", "actor_name", "via", "action", "object_type", "object_id",
            "object_repr", "changes",
        ]  # fmt: skip

    def get_object_type(self, entry: AuditEntry) -> str:
        return f"{entry.content_type.app_label}.{entry.content_type.model}"


FILTERS = [
    OpenApiParameter("object_type", str, description='app label and model: "llmproxy.provider"'),
    OpenApiParameter("object_id", str),
    OpenApiParameter("actor", int, description="user id"),
    OpenApiParameter("via", str, enum=AuditVia.values),
    OpenApiParameter("action", str, enum=AuditAction.values),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="ISO date or time (UTC)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="ISO date or time, exclusive"),
]


@extend_schema_view(list=extend_schema(parameters=FILTERS))
class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """Who changed what, newest first; needs the audit log's view permission. Nothing here
    (or in the admin) adds, changes or deletes an entry."""

    serializer_class = AuditEntrySerializer
    permission_classes = [ModelPermission]
    pagination_class = Pages
    queryset = AuditEntry.objects.select_related("content_type").order_by("-at", "-id")

    def get_queryset(self):
        entries = self.queryset
        query = self.request.query_params
        if query.get("object_type"):
            app_label, _, model = _text("object_type", query["object_type"]).partition(".")
            if not model:
                raise ValidationError({"object_type": 'expected "app_label.model"'})
            entries = entries.filter(
                content_type__app_label=app_label, content_type__model=model.lower()
            )
        if query.get("object_id"):
            entries = entries.filter(object_id=_text("object_id", query["object_id"]))
        if query.get("actor"):
            entries = entries.filter(actor_id=_integer("actor", query["actor"]))
        for name, choices in (("via", AuditVia.values), ("action", AuditAction.values)):
            if query.get(name):
                if query[name] not in choices:
                    raise ValidationError({name: f"one of {', '.join(choices)}"})
                entries = entries.filter(**{name: query[name]})
        if query.get("since"):
            entries = entries.filter(at__gte=_moment("since", query["since"]))
        if query.get("until"):
            entries = entries.filter(at__lt=_moment("until", query["until"]))
        return entries
