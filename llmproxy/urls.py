from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path
from django.views.generic import RedirectView

from llmproxy.console import connect, dashboard, device, people_pages, signin_pages
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
    path("login/", signin_pages.LoginPage.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("oidc/authenticate/", signin_pages.SsoStart.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", signin_pages.SsoCallback.as_view(), name="oidc_authentication_callback"),
    path("admin/", admin.site.urls),
    path("api/", include("llmproxy.console.api.urls")),
    path("dashboard/", dashboard.overview, name="dashboard"),
    path("dashboard/keys/<int:key_id>/", dashboard.key_detail, name="dashboard-key"),
    path("dashboard/people/", people_pages.people, name="dashboard-people"),
    path("dashboard/people/<int:user_id>/", people_pages.person_detail, name="dashboard-person"),
    path("me/", people_pages.me, name="self-service"),
    path("me/keys/<int:key_id>/revoke", people_pages.revoke_key, name="me-revoke-key"),
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
