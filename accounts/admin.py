from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import models
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts import services, signin
from accounts.forms import CommaListField
from accounts.models import (
    ApiKey,
    ApiToken,
    AuditEntry,
    Identity,
    IdpGroupMapping,
    Person,
    SignInToken,
    Team,
)

# Webhook URLs typed without a scheme mean https (Django 6's default, chosen now).
URL_FIELDS = {models.URLField: {"assume_scheme": "https"}}


class TeamAdmin(admin.ModelAdmin):
    formfield_overrides = URL_FIELDS
    list_display = ["name", "budget_usd", "budget_period", "member_count", "created_at"]
    list_filter = ["budget_period"]
    search_fields = ["name", "members__username"]
    filter_horizontal = ["members"]

    @admin.display(description="members")
    def member_count(self, team: Team) -> int:
        return team.members.count()


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.active()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


def _refuse_a_foreign_key_secret() -> None:
    """A new key or token must be one the gateway accepts (services check it again)."""
    if not services.key_secret_matches():
        raise forms.ValidationError(str(services.KeySecretMismatch()))


class ApiKeyForm(forms.ModelForm):
    allowed_models = CommaListField(
        required=False, help_text=ApiKey._meta.get_field("allowed_models").help_text
    )
    allowed_endpoints = CommaListField(
        required=False, help_text=ApiKey._meta.get_field("allowed_endpoints").help_text
    )
    allowed_tools = CommaListField(
        required=False, help_text=ApiKey._meta.get_field("allowed_tools").help_text
    )
    tags = CommaListField(required=False)
    alert_webhook_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text=ApiKey._meta.get_field("alert_webhook_url").help_text,
    )

    def clean(self):
        if self.instance.pk is None:
            _refuse_a_foreign_key_secret()
        return super().clean()

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "owner",
            "team",
            "tags",
            "metadata",
            "allowed_models",
            "allowed_endpoints",
            "allowed_tools",
            "allow_background",
            "rpm",
            "tpm",
            "max_concurrent",
            "budget_usd",
            "budget_period",
            "reserve_mode",
            "alert_webhook_url",
            "expires_at",
            "revoked_reason",
        ]


class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    formfield_overrides = URL_FIELDS
    list_display = [
        "name",
        "prefix_shown",
        "owner",
        "team",
        "state",
        "budget_usd",
        "budget_period",
        "created_at",
        "last_used_at",
    ]
    list_filter = [KeyStateFilter, "team", "budget_period", "created_at"]
    search_fields = ["name", "prefix", "owner__username", "owner__email", "team__name"]
    list_select_related = ["owner", "team"]
    readonly_fields = ["prefix_shown", "created_at", "last_used_at", "revoked_at"]
    autocomplete_fields = ["owner", "team"]
    actions = ["revoke_selected"]
    fieldsets = [
        (None, {"fields": ["name", "prefix_shown", "owner", "team", "tags", "metadata"]}),
        (
            "Policy",
            {
                "fields": [
                    "allowed_models",
                    "allowed_endpoints",
                    "allowed_tools",
                    "allow_background",
                ]
            },
        ),
        (
            "Limits",
            {
                "fields": [
                    "rpm",
                    "tpm",
                    "max_concurrent",
                    "budget_usd",
                    "budget_period",
                    "reserve_mode",
                    "alert_webhook_url",
                ]
            },
        ),
        (
            "Lifetime",
            {
                "fields": [
                    "created_at",
                    "expires_at",
                    "last_used_at",
                    "revoked_at",
                    "revoked_reason",
                ]
            },
        ),
    ]

    @admin.display(description="key", ordering="prefix")
    def prefix_shown(self, key: ApiKey) -> str:
        return f"{key.prefix}…" if key.prefix else "(assigned on save)"

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        if key.is_revoked:
            return "revoked"
        return "expired" if key.is_expired() else "active"

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if not change:
            # Only lives on the request until response_add shows it once.
            request._llmproxy_new_secret = services.assign_new_secret(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj: ApiKey, post_url_continue=None):
        secret = getattr(request, "_llmproxy_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": obj,
            "secret": secret,
            "title": "Copy the new key now",
        }
        response = TemplateResponse(request, "admin/accounts/apikey/secret_once.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        count = services.revoke_keys(
            queryset=queryset, reason=f"revoked in the admin by {request.user.get_username()}"
        )
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class ApiTokenForm(forms.ModelForm):
    def clean(self):
        _refuse_a_foreign_key_secret()
        return super().clean()

    class Meta:
        model = ApiToken
        fields = ["user", "name"]


class ApiTokenAdmin(admin.ModelAdmin):
    """Management API tokens: the secret is shown once, on the page after creation.

    A token acts as its person: a staff member sees, makes and deletes only their own; a
    superuser anyone's."""

    form = ApiTokenForm
    list_display = ["name", "user", "prefix_shown", "created_at", "last_used_at"]
    search_fields = ["name", "user__username", "prefix"]
    list_select_related = ["user"]
    fields = ["user", "name"]
    autocomplete_fields = ["user"]

    @admin.display(description="token", ordering="prefix")
    def prefix_shown(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a token is made or deleted, never edited

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_autocomplete_fields(self, request):
        # The user autocomplete would offer everyone; a staff member may pick only themselves.
        return ["user"] if request.user.is_superuser else []

    def save_model(self, request, obj: ApiToken, form, change: bool) -> None:
        if obj.user_id != request.user.pk and not request.user.is_superuser:
            raise PermissionDenied("Only a superuser makes API tokens for someone else.")
        token, secret = services.create_api_token(user=obj.user, name=obj.name)
        obj.pk = token.pk
        request._llmproxy_new_secret = secret

    def response_add(self, request, obj: ApiToken, post_url_continue=None):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "token": obj,
            "secret": request._llmproxy_new_secret,
            "title": "Copy the new API token now",
        }
        response = TemplateResponse(request, "admin/accounts/apitoken/secret_once.html", context)
        response["Cache-Control"] = "no-store"
        return response


admin.site.register(ApiToken, ApiTokenAdmin)
admin.site.register(Team, TeamAdmin)
admin.site.register(ApiKey, ApiKeyAdmin)


class PersonAdmin(admin.ModelAdmin):
    """A person's own policy and budget, on top of every key and sign-in of theirs."""

    formfield_overrides = URL_FIELDS
    list_display = ["user", "default_team", "budget_usd", "budget_period", "rpm", "max_concurrent"]
    list_select_related = ["user", "default_team"]
    search_fields = ["user__username", "user__email"]
    autocomplete_fields = ["user", "default_team"]


class SignInTokenAdmin(admin.ModelAdmin):
    """Sign-ins from Claude Code's /login and llmproxy login: listed and revoked, never shown
    (only a prefix of each token is stored in the clear)."""

    list_display = ["person", "client", "kind", "prefix", "created_at", "expires_at", "revoked_at"]
    list_filter = ["client", "kind", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["person__username", "prefix", "family"]
    list_select_related = ["person"]
    readonly_fields = [f.name for f in SignInToken._meta.fields]
    actions = ["revoke_sign_ins"]

    def has_add_permission(self, request) -> bool:
        return False  # tokens come from signing in

    @admin.action(description="Revoke the sign-ins of the selected tokens", permissions=["change"])
    def revoke_sign_ins(self, request, queryset):
        ended = sum(
            signin.revoke_family(family, reason=f"revoked by {request.user.get_username()}")
            for family in set(queryset.values_list("family", flat=True))
        )
        self.message_user(request, f"Revoked {ended} token(s).", messages.SUCCESS)


admin.site.register(Person, PersonAdmin)
admin.site.register(SignInToken, SignInTokenAdmin)


class PeopleUserAdmin(UserAdmin):
    """Django's user admin, except that staff and superuser flags, groups and permissions,
    and superusers' accounts, are a superuser's to change (a staff member with the user
    permissions could otherwise make themselves anything)."""

    SUPERUSER_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [name for name in self.SUPERUSER_FIELDS if name not in fields]
        return fields

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        if obj is not None and obj.pk == request.user.pk:
            return False  # the audit entry names its actor: another admin deletes you
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        # "Delete selected" checks the model permission only, not each row.
        if not request.user.is_superuser and queryset.filter(is_superuser=True).exists():
            raise PermissionDenied("Only a superuser may delete a superuser's account.")
        if queryset.filter(pk=request.user.pk).exists():
            raise PermissionDenied("You cannot delete your own account; ask another admin.")
        super().delete_queryset(request, queryset)


class SuperuserGroupAdmin(GroupAdmin):
    """Groups carry permissions: only a superuser makes or changes one (a staff member with
    the group permissions could otherwise grant themselves any permission)."""

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


for _model, _admin in ((get_user_model(), PeopleUserAdmin), (Group, SuperuserGroupAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)


class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log: browsed and filtered here, never added to, changed or deleted."""

    list_display = ["at", "actor_name", "via", "action", "content_type", "object_id",
                    "object_repr", "changed_fields"]  # fmt: skip
    list_filter = ["via", "action", "content_type", ("actor", admin.RelatedOnlyFieldListFilter),
                   "at"]  # fmt: skip
    search_fields = ["object_repr", "object_id", "actor_name"]
    date_hierarchy = "at"
    list_select_related = ["content_type"]
    show_full_result_count = False

    @admin.display(description="fields")
    def changed_fields(self, entry) -> str:
        return ", ".join(entry.changes)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class IdentityAdmin(admin.ModelAdmin):
    """Who signed in through the IdP, as whom (made by single sign-on, never by hand)."""

    list_display = ["user", "email", "issuer", "signed_in_at", "checked_at"]
    search_fields = ["user__username", "email", "subject"]
    list_select_related = ["user"]
    readonly_fields = ["user", "issuer", "subject", "email", "groups", "created_at",
                       "signed_in_at", "checked_at"]  # fmt: skip
    exclude = ["refresh_token"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


admin.site.register(AuditEntry, AuditEntryAdmin)


class IdpGroupMappingAdmin(admin.ModelAdmin):
    """IdP groups → teams and staff, applied at each single sign-on."""

    list_display = ["idp_group", "team", "make_staff", "make_superuser"]
    list_select_related = ["team"]
    search_fields = ["idp_group", "team__name"]
    autocomplete_fields = ["team"]


admin.site.register(Identity, IdentityAdmin)
admin.site.register(IdpGroupMapping, IdpGroupMappingAdmin)
