"""Who is calling the management API: a person's API token, or a virtual key (for /api/me)."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts import keys, services, signin
from accounts.models import ApiToken, SignInToken


def _bearer(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


VIRTUAL_KEY_REFUSED = (
    "This is a virtual key (llmp-…): it works on the proxy paths and for GET /api/me only. "
    "The management API wants a management API token (Authorization: Bearer llmpt-…), made "
    "in the admin (Accounts and keys → API tokens) or with POST /api/tokens/."
)


class TokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer llmpt-…``: a token created in the admin or at /api/tokens/.

    A virtual key, in ``x-api-key`` or as the bearer, is refused with a message saying what
    the management API wants (/api/me, which takes the key, does not use this class); any
    other bearer is an invalid token.
    """

    def authenticate(self, request):
        secret = _bearer(request)
        if secret is None:
            if request.META.get("HTTP_X_API_KEY", "").startswith(keys.KEY_MARKER):
                raise exceptions.AuthenticationFailed(VIRTUAL_KEY_REFUSED)
            return None
        if secret.startswith(keys.KEY_MARKER):
            raise exceptions.AuthenticationFailed(VIRTUAL_KEY_REFUSED)
        if not secret.startswith(keys.TOKEN_MARKER):
            raise exceptions.AuthenticationFailed("Invalid API token.")
        token = services.find_api_token(secret)
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid API token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request) -> str:
        return "Bearer"


class VirtualKeyAuthentication(authentication.BaseAuthentication):
    """A virtual key (``x-api-key`` or Bearer ``llmp-…``), for the key's own /api/me."""

    def authenticate(self, request):
        secret = request.META.get("HTTP_X_API_KEY") or _bearer(request)
        if not secret or not secret.startswith(keys.KEY_MARKER):
            return None
        key = services.find_key(secret)
        if key is None or not key.is_active:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired key.")
        return AnonymousUser(), key

    def authenticate_header(self, request) -> str:
        return "Bearer"


class SignInTokenAuthentication(authentication.BaseAuthentication):
    """A sign-in access token (Bearer ``llmpa-…``, from /login or ``llmproxy login``), for
    the person's own /api/me: the request's user is the person."""

    def authenticate(self, request):
        secret = _bearer(request)
        if not secret or not secret.startswith(keys.ACCESS_MARKER):
            return None
        token = signin.find(secret, SignInToken.ACCESS)
        if token is None or not token.is_live or not token.person.is_active:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired sign-in token.")
        return token.person, token

    def authenticate_header(self, request) -> str:
        return "Bearer"


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "llmproxy.console.api.auth.TokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token (llmpt-…)."}


class VirtualKeyScheme(OpenApiAuthenticationExtension):
    target_class = "llmproxy.console.api.auth.VirtualKeyAuthentication"
    name = "virtualKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A virtual key (llmp-…)."}


class SignInTokenScheme(OpenApiAuthenticationExtension):
    target_class = "llmproxy.console.api.auth.SignInTokenAuthentication"
    name = "signInToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A sign-in token (llmpa-…)."}
