from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from llmproxy.console import dashboard
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
]
