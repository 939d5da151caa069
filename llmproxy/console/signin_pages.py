"""The web sign-in: a password form (always) and single sign-on with the configured OpenID
provider (accounts.sso), for the admin, the dashboard and the self-service pages."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from accounts import sso

log = logging.getLogger(__name__)


def sso_context(request) -> dict:
    """Template context processor: whether to offer the single sign-on button."""
    return {"sso_enabled": sso.enabled()}


class LoginPage(auth_views.LoginView):
    template_name = "accounts/login.html"

    def get_context_data(self, **kwargs) -> dict:
        context = {**admin.site.each_context(self.request), **super().get_context_data(**kwargs)}
        return context | {"is_nav_sidebar_enabled": False}


def _unavailable(request, exc: Exception):
    log.warning("single sign-on: the identity provider: %s", exc)
    return render(request, "accounts/sso_unavailable.html", status=503)


class SsoStart(OIDCAuthenticationRequestView):
    """Sends the browser to the IdP (state, nonce and PKCE in the session)."""

    get_settings = staticmethod(sso.oidc_setting)

    def __init__(self, *args, **kwargs) -> None:
        # The endpoints are read in get(): a missing IdP is a page, not a 500.
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)

    def get(self, request):
        if not sso.enabled():
            raise Http404("single sign-on is not configured")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = sso.discovery()["authorization_endpoint"]
        except sso.IdpUnavailable as exc:
            return _unavailable(request, exc)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


class SsoCallback(OIDCAuthenticationCallbackView):
    """The IdP sends the browser back here with a code; a failure says why on /login/."""

    get_settings = staticmethod(sso.oidc_setting)

    def get(self, request):
        if not sso.enabled():
            raise Http404("single sign-on is not configured")
        try:
            return super().get(request)
        except sso.IdpUnavailable as exc:
            return _unavailable(request, exc)

    def login_success(self):
        response = super().login_success()
        self.request.session.set_expiry(settings.LLMPROXY_OIDC_SESSION_SECONDS)
        return response

    def login_failure(self):
        user = getattr(self, "user", None)
        if user is not None and not user.is_active:
            messages.error(self.request, "This account is disabled; ask an admin.")
        elif not messages.get_messages(self.request):
            messages.error(self.request, "Single sign-on did not complete; try again.")
        return HttpResponseRedirect(settings.LOGIN_REDIRECT_URL_FAILURE)
