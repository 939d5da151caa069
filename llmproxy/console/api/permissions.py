"""Who may do what: staff everything; a key's owner sees and rotates own keys; others nothing."""

from __future__ import annotations

from rest_framework import permissions

from accounts.models import ApiKey


class IsStaff(permissions.BasePermission):
    message = "Only staff may do this."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class StaffWritesOthersRead(permissions.BasePermission):
    """Authenticated people read what their queryset shows them; only staff write."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or request.user.is_staff


class HasVirtualKey(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:

        return isinstance(request.auth, ApiKey)
