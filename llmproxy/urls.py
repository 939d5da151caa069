from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from llmproxy.console import connect, dashboard, device
from llmproxy.console.health import healthz, readyz
from llmproxy.console.metrics import metrics_view

admin.site.site_header = "llmproxy"
admin.site.site_title = "llmproxy admin"
admin.site.index_title = "Gateway administration"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("favicon.ico", dashboard.favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("api/", include("llmproxy.console.api.urls")),
    path("dashboard/", dashboard.overview, name="dashboard"),
    path("dashboard/keys/<int:key_id>/", dashboard.key_detail, name="dashboard-key"),
    # The web side's own sign-in (settings.LOGIN_URL): local passwords.
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="people/login.html"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Signing in from Claude Code and llmproxy login (docs/people.md)
    path(".well-known/oauth-authorization-server", device.discovery, name="oauth-discovery"),
    path("oauth/device_authorization", device.device_authorization, name="oauth-device"),
    path("oauth/token", device.token, name="oauth-token"),
    path("oauth/revoke", device.revoke, name="oauth-revoke"),
    path("oauth/userinfo", device.userinfo, name="oauth-userinfo"),
    path("device", device.device_page, name="device"),
    path("managed/settings", connect.managed_settings, name="managed-settings"),
    path("connect/", connect.connect_page, name="connect"),
]
