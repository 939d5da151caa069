from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from llmproxy.console.api import audit, people, spend, views

router = DefaultRouter()
router.register("keys", views.ApiKeyViewSet, basename="key")
router.register("teams", views.TeamViewSet, basename="team")
router.register("users", views.UserViewSet, basename="user")
router.register("providers", views.ProviderViewSet, basename="provider")
router.register("routes", views.ModelRouteViewSet, basename="route")
router.register("prices", views.PriceViewSet, basename="price")
router.register("usage", views.UsageViewSet, basename="usage")
router.register("tokens", views.TokenViewSet, basename="token")
router.register("audit", audit.AuditViewSet, basename="audit")
router.register("people", people.PersonViewSet, basename="person")
router.register("memberships", people.MembershipViewSet, basename="membership")
router.register("sign-ins", people.SignInViewSet, basename="sign-in")

urlpatterns = [
    path("me", spend.MeView.as_view(), name="me"),
    path("spend/breakdown", spend.BreakdownView.as_view(), name="spend-breakdown"),
    path("sessions", spend.SessionsView.as_view(), name="sessions"),
    path("spend", views.SpendView.as_view(), name="spend"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", include(router.urls)),
]
