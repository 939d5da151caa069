"""The audit log: every change made through the admin, the API or a management command.

Each app names the models it wants audited with ``track`` (in its ``AppConfig.ready``), so
this module, in the lowest layer that has people, refers to the others' models only by
content type and id. Signals record a change when something is acting
(``llmproxy.core.acting``: the admin and API requests through ``AuditMiddleware``, the
management commands through ``OpsCommand``); the proxy's own writes are not audited. The
entry is written in the change's own transaction, so a change rolled back leaves no entry.

Bulk ``QuerySet.update`` and ``bulk_create`` send no signals: code that changes audited
rows in the admin, the API or a command saves them one by one (the services do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from accounts.models import AuditAction, AuditEntry
from llmproxy.core import acting

REDACTED = "[redacted]"


@dataclass(frozen=True)
class Tracked:
    secret: frozenset[str]  # attnames whose values never reach the log
    ignore: frozenset[str]  # bookkeeping (last used, last login): not a change


_tracked: dict[type[models.Model], Tracked] = {}


def track(model, *, secret=(), ignore=(), m2m=()) -> None:
    """Audit every create, change and delete of ``model``, and of its many-to-many fields
    named in ``m2m`` (from either side)."""
    _tracked[model] = Tracked(frozenset(secret), frozenset(ignore))
    uid = f"audit-{model._meta.label_lower}"
    pre_save.connect(_remember, sender=model, dispatch_uid=f"{uid}-pre", weak=False)
    post_save.connect(_saved, sender=model, dispatch_uid=f"{uid}-save", weak=False)
    post_delete.connect(_deleted, sender=model, dispatch_uid=f"{uid}-delete", weak=False)
    for name in m2m:
        through = model._meta.get_field(name).remote_field.through
        m2m_changed.connect(_related, sender=through, dispatch_uid=f"{uid}-{name}", weak=False)


def _plain(value):
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _value(field, instance):
    value = field.value_from_object(instance)
    if isinstance(field, models.DecimalField) and isinstance(value, Decimal):
        # As the column holds it: an unsaved 150 and a stored 150.0000 are the same value.
        value = value.quantize(Decimal(1).scaleb(-field.decimal_places))
    return _plain(value)


def _values(instance) -> dict:
    return {field.attname: _value(field, instance) for field in instance._meta.concrete_fields}


def _shown(tracked: Tracked, name: str, value):
    if name in tracked.secret and value not in (None, ""):
        return REDACTED
    return value


def _write(instance, action: str, changes: dict, actor: acting.Acting) -> None:
    user = actor.actor()
    AuditEntry.objects.create(
        actor=user,
        actor_name=(user.get_username() if user is not None else actor.name)[:150],
        via=actor.via,
        action=action,
        content_type=ContentType.objects.get_for_model(type(instance), for_concrete_model=False),
        object_id=str(instance.pk)[:64],
        object_repr=str(instance)[:200],
        changes=changes,
    )


def _remember(sender, instance, raw=False, **kwargs) -> None:
    if raw or acting.current() is None or instance.pk is None:
        return
    stored = sender._base_manager.filter(pk=instance.pk).first()
    instance._audit_before = _values(stored) if stored is not None else None


def _saved(sender, instance, created, raw=False, **kwargs) -> None:
    actor = acting.current()
    if raw or actor is None:
        return
    tracked = _tracked[sender]
    before = None if created else getattr(instance, "_audit_before", None)
    after = _values(instance)
    changes = {
        name: {"old": _shown(tracked, name, (before or {}).get(name)),
               "new": _shown(tracked, name, value)}
        for name, value in after.items()
        if name not in tracked.ignore and (before is None or before.get(name) != value)
    }  # fmt: skip
    if before is not None and not changes:
        return  # only bookkeeping changed
    _write(instance, AuditAction.CREATE if before is None else AuditAction.UPDATE, changes, actor)
    instance._audit_before = after


def _deleted(sender, instance, **kwargs) -> None:
    actor = acting.current()
    if actor is None:
        return
    tracked = _tracked[sender]
    changes = {
        name: {"old": _shown(tracked, name, value), "new": None}
        for name, value in _values(instance).items()
        if name not in tracked.ignore
    }
    _write(instance, AuditAction.DELETE, changes, actor)


def _accessor(sender, instance) -> str | None:
    """The name of ``instance``'s many-to-many field (or reverse accessor) for ``sender``."""
    for field in type(instance)._meta.get_fields():
        if not field.many_to_many:
            continue
        through = field.remote_field.through if field.concrete else field.through
        if through is sender:
            return field.name if field.concrete else field.get_accessor_name()
    return None


def _related(sender, instance, action, **kwargs) -> None:
    actor = acting.current()
    if actor is None or type(instance) not in _tracked:
        return
    name = _accessor(sender, instance)
    if name is None:
        return
    current = sorted(getattr(instance, name).values_list("pk", flat=True))
    if action.startswith("pre_"):
        instance._audit_related = {**getattr(instance, "_audit_related", {}), name: current}
        return
    before = getattr(instance, "_audit_related", {}).pop(name, None)
    if before is None or before == current:
        return
    changes = {name: {"old": _plain(before), "new": _plain(current)}}
    _write(instance, AuditAction.UPDATE, changes, actor)


class AuditMiddleware:
    """Admin and API requests act for their user: changes they make are audited. Sync and
    async, so it adds no thread hop to Django's async views."""

    sync_capable = True
    async_capable = True
    PREFIXES = (("/admin/", "admin"), ("/api/", "api"))

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _via(self, request) -> str | None:
        for prefix, via in self.PREFIXES:
            if request.path.startswith(prefix):
                return via
        return None

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        via = self._via(request)
        if via is None:
            return self.get_response(request)
        with acting.acting(via, request=request):
            return self.get_response(request)

    async def _acall(self, request):
        via = self._via(request)
        if via is None:
            return await self.get_response(request)
        # The context is copied into the thread a sync view runs in (asgiref).
        with acting.acting(via, request=request):
            return await self.get_response(request)
