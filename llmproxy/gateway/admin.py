from __future__ import annotations

from django import forms
from django.contrib import admin

from llmproxy.gateway import services
from llmproxy.gateway.kinds import kind_of
from llmproxy.gateway.models import ModelRoute, Provider
from llmproxy.gateway.targets import check_base_url

NEW_URL_NEEDS_KEY = (
    "The base URL changed: enter the API key for the new address again (the stored key is "
    "cleared, never sent to a new address)."
)


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        help_text=Provider._meta.get_field("base_url").help_text,
    )
    # Write-only: never rendered back, not even masked.
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current key "
        "(a changed base URL needs it again). "
        "Bedrock: ACCESS_KEY_ID:SECRET_ACCESS_KEY (or empty for the standard AWS sources); "
        "Vertex: the service account's JSON key; Azure: the resource key, or Entra JSON.",
    )

    class Meta:
        model = Provider
        fields = [
            "name", "kind", "base_url", "api_key", "extra_headers", "options", "websockets",
            "enabled",
        ]  # fmt: skip

    def clean_base_url(self) -> str:
        return check_base_url(self.cleaned_data["base_url"])

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if kind is None:
            return cleaned
        url_changed = (
            self.instance.pk is not None
            and "base_url" in cleaned
            and cleaned["base_url"] != self.instance.base_url.rstrip("/")
        )
        if not cleaned.get("api_key") and url_changed and self.instance.has_credential:
            self.add_error("api_key", NEW_URL_NEEDS_KEY)
            return cleaned
        credential = cleaned.get("api_key") or self.instance.credential
        if not credential and kind_of(kind).credential_required:
            self.add_error("api_key", "A new provider needs its API key.")
            return cleaned
        try:
            cleaned["options"] = services.check_provider(
                kind=kind, credential=credential, options=cleaned.get("options") or {}
            )
        except services.InvalidProvider as exc:
            self.add_error("api_key" if exc.field == "credential" else "options", str(exc))
        return cleaned

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.credential = self.cleaned_data["api_key"]
        if commit:
            provider.save()
        return provider


class ModelRouteInline(admin.TabularInline):
    model = ModelRoute
    extra = 0


class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = [
        "name", "kind", "base_url", "credential_state", "websockets", "enabled", "updated_at",
    ]  # fmt: skip
    list_filter = ["kind", "enabled", "websockets"]
    search_fields = ["name", "base_url"]
    inlines = [ModelRouteInline]

    # Providers hold the organisation's credentials and decide where they are sent: only
    # superusers add, change or delete them, whatever model permissions a staff user has.
    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    @admin.display(description="credential")
    def credential_state(self, provider: Provider) -> str:
        return "set" if provider.has_credential else "missing"


class ModelRouteAdmin(admin.ModelAdmin):
    list_display = ["pattern", "provider", "upstream_model", "priority", "enabled"]
    list_filter = ["provider", "enabled"]
    search_fields = ["pattern", "upstream_model"]
    list_editable = ["priority", "enabled"]


admin.site.register(Provider, ProviderAdmin)
admin.site.register(ModelRoute, ModelRouteAdmin)
