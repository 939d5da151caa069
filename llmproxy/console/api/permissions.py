"""Who may do what on the management API: Django's model permissions, as in the admin.

- A staff member acts on every object of a model as far as their model permissions go
  (``view``, ``add``, ``change``, ``delete``; a superuser has them all). Being staff alone
  grants nothing.
- Anyone signed in reads what is theirs without a permission (their keys, teams, usage,
  tokens, sign-ins, their own person row) and may do the few things an owner may do to it
  (rotate, revoke, tighten a key; revoke a sign-in; delete an own API token).
- Some actions are for superusers only, whatever permissions a staff member holds
  (``SUPERUSER_ONLY`` in docs/api.md): adding, changing or deleting providers (they hold the
  organisation's credentials and decide where they go), setting staff or superuser flags or
  changing a superuser's account, and API tokens of other people (minting one acts as them).
"""

from __future__ import annotations

from rest_framework import permissions

from accounts.models import ApiKey

# What each viewset action needs of the model, as Django permission actions.
ACTION_PERMISSION = {
    "list": "view",
    "retrieve": "view",
    "create": "add",
    "update": "change",
    "partial_update": "change",
    "destroy": "delete",
}


def codename(model, action: str) -> str:
    return f"{model._meta.app_label}.{action}_{model._meta.model_name}"


def may(user, model, action: str) -> bool:
    """Whether ``user`` may ``action`` (view, add, change, delete) every object of ``model``."""
    if not (user and user.is_authenticated and user.is_active and user.is_staff):
        return False
    return user.has_perm(codename(model, action))


def model_of(view):
    """The model whose permissions the view needs (``permission_model``, else its queryset's)."""
    return getattr(view, "permission_model", None) or view.queryset.model


def action_of(view) -> str:
    """The Django permission action the view's current action needs."""
    extra = getattr(view, "action_permissions", {})
    return extra.get(view.action) or ACTION_PERMISSION.get(view.action) or "change"


class ModelPermission(permissions.BasePermission):
    """Staff with the model permission the action needs (``view`` for reads)."""

    message = "You need the model permission for this (ask a superuser to grant it)."

    def has_permission(self, request, view) -> bool:
        return may(request.user, model_of(view), action_of(view))


class ModelPermissionOrOwn(permissions.BasePermission):
    """Reads: anyone signed in, of what the view's queryset shows them (everything with the
    ``view`` permission, else their own). Actions named in the view's ``owner_actions``:
    the model permission, or the object is the caller's own (``view.is_own(obj)``). Any
    other write: the model permission."""

    message = "You need the model permission for this (ask a superuser to grant it)."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if view.action in ("list", "retrieve") or view.action in view.owner_actions:
            return True
        return may(request.user, model_of(view), action_of(view))

    def has_object_permission(self, request, view, obj) -> bool:
        if view.action in ("list", "retrieve"):
            return True
        if may(request.user, model_of(view), action_of(view)):
            return True
        return view.action in view.owner_actions and view.is_own(obj)


class SuperuserWrites(permissions.BasePermission):
    """Reads need the model's ``view`` permission; every write is for superusers only."""

    message = "Only a superuser may change this."

    def has_permission(self, request, view) -> bool:
        if view.action in ("list", "retrieve"):
            return may(request.user, model_of(view), "view")
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_superuser)


class HasVirtualKey(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey)
