"""Signing in from Claude Code and ``llmproxy login``: the OAuth 2.0 device grant's HTTP side.

``/.well-known/oauth-authorization-server`` (RFC 8414) names the endpoints; Claude Code
posts ``surface=claude_code`` and nothing else to the device authorization endpoint, polls
the token endpoint, refreshes there and revokes at the revocation endpoint (RFC 7009) when
the person runs ``claude auth logout``. The /device page is where a person signed in to the
web side enters or confirms a user code and approves or denies it. The flow itself lives in
accounts/device.py; tokens in accounts/signin.py.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from accounts import device, signin
from accounts.models import SignInClient, SignInToken
from accounts.signin import Issued, SignInError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_MAX_FIELD = 1000
# What a client sends as ``surface``: Claude Code says claude_code; llmproxy login says cli.
SURFACES = {"claude_code": SignInClient.CLAUDE_CODE, "cli": SignInClient.CLI, "": SignInClient.CLI}
# RFC 8628's polling errors are 400s, slow_down a 429 as Anthropic's reference gateway sends
# it; a refresh refused is a 401, which is what makes Claude Code ask for /login again.
STATUSES = {"slow_down": 429, "temporarily_unavailable": 503}


def base_url(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def _json(body: dict, status: int = 200) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


def _oauth_error(code: str, description: str, status: int | None = None) -> JsonResponse:
    return _json(
        {"error": code, "error_description": description}, status or STATUSES.get(code, 400)
    )


def _field(request: HttpRequest, name: str) -> str | None:
    value = request.POST.get(name)
    if value is None or len(value) > _MAX_FIELD:
        return None
    return value.strip()


@require_GET
def discovery(request: HttpRequest) -> JsonResponse:
    base = base_url(request)
    return JsonResponse(
        {
            "issuer": base,
            "device_authorization_endpoint": f"{base}/oauth/device_authorization",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "userinfo_endpoint": f"{base}/oauth/userinfo",
            "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "gateway_protocol_version": 1,
        }
    )


def _post_only(request: HttpRequest) -> JsonResponse | None:
    if request.method != "POST":
        response = _oauth_error("invalid_request", "Use POST.", status=405)
        response["Allow"] = "POST"
        return response
    return None


@csrf_exempt
def device_authorization(request: HttpRequest) -> JsonResponse:
    if (refused := _post_only(request)) is not None:
        return refused
    surface = _field(request, "surface")
    client = SURFACES.get(surface if surface is not None else "")
    if client is None:
        return _oauth_error("invalid_request", "surface must be claude_code or cli.")
    started = device.start(client=client, requested_from=request.META.get("REMOTE_ADDR"))
    page = f"{base_url(request)}/device"
    return _json(
        {
            "device_code": started.device_code,
            "user_code": started.user_code,
            "verification_uri": page,
            "verification_uri_complete": f"{page}?user_code={started.user_code}",
            "expires_in": started.expires_in,
            "interval": started.interval,
        }
    )


def _tokens(issued: Issued) -> JsonResponse:
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
    }
    if issued.email:
        body["email"] = issued.email
    return _json(body)


@csrf_exempt
def token(request: HttpRequest) -> JsonResponse:
    if (refused := _post_only(request)) is not None:
        return refused
    grant = _field(request, "grant_type")
    if grant == DEVICE_GRANT:
        code = _field(request, "device_code")
        if not code:
            return _oauth_error("invalid_request", "device_code is required.")
        try:
            issued = device.poll(device_code=code)
        except SignInError as error:
            return _oauth_error(error.code, error.message)
        return _tokens(issued)
    if grant == "refresh_token":
        secret = _field(request, "refresh_token")
        if not secret:
            return _oauth_error("invalid_request", "refresh_token is required.")
        try:
            issued = signin.refresh(secret=secret)
        except SignInError as error:
            return _oauth_error(error.code, error.message, status=401)
        return _tokens(issued)
    if not grant:
        return _oauth_error("invalid_request", "grant_type is required.")
    return _oauth_error("unsupported_grant_type", f"Unsupported grant_type {grant[:80]!r}.")


@csrf_exempt
def revoke(request: HttpRequest) -> HttpResponse:
    """RFC 7009: 200 whether or not the token was known, so it tells a guesser nothing."""
    if (refused := _post_only(request)) is not None:
        return refused
    secret = _field(request, "token")
    if not secret:
        return _oauth_error("invalid_request", "token is required.")
    signin.revoke(secret=secret)
    return HttpResponse(status=200, headers={"Cache-Control": "no-store"})


def bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


def live_access_token(request: HttpRequest) -> SignInToken | None:
    """The live sign-in access token of an active person the request carries, or None."""
    secret = bearer(request)
    token = signin.find(secret, SignInToken.ACCESS) if secret else None
    if token is None or not token.is_live or not token.person.is_active:
        return None
    return token


@require_GET
def userinfo(request: HttpRequest) -> JsonResponse:
    token = live_access_token(request)
    if token is None:
        response = _oauth_error("invalid_token", "Sign in again.", status=401)
        response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    person = token.person
    return _json(
        {
            "sub": str(person.pk),
            "preferred_username": person.get_username(),
            "email": person.email,
            "name": person.get_full_name(),
            "expires_in": max(0, int((token.expires_at - timezone.now()).total_seconds())),
        }
    )


# --- the /device page ---------------------------------------------------------------------


def _cross_site(request: HttpRequest) -> bool:
    """Browsers say where a request comes from; only the page itself may post to it (Django's
    CSRF check, which also compares Origin, runs before this)."""
    return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")


@never_cache
@login_required
def device_page(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        # Never looked up on GET: a pre-filled code is only shown, approved by a click.
        code = device.normalize_user_code(request.GET.get("user_code")) or ""
        return render(request, "people/device.html", {"user_code": code, "step": "enter"})
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    if _cross_site(request):
        return render(request, "people/device.html", {"step": "refused"}, status=403)
    subjects = [f"person:{request.user.pk}", f"ip:{request.META.get('REMOTE_ADDR')}"]
    if device.attempts_exhausted(subjects):
        return render(request, "people/device.html", {"step": "locked"}, status=429)
    code = device.normalize_user_code(request.POST.get("user_code", "")[:_MAX_FIELD])
    action = request.POST.get("action")
    found = device.find_pending(code) if code else None
    if found is None:
        device.count_wrong_code(subjects)
        context = {"step": "enter", "user_code": code or "", "wrong": True}
        return render(request, "people/device.html", context, status=400)
    if action not in ("approve", "deny"):
        context = {"step": "confirm", "user_code": code, "sign_in": found}
        return render(request, "people/device.html", context)
    decided = device.decide(user_code=code, person=request.user, approve=action == "approve")
    if decided is None:  # decided or expired between the lookup and now
        return render(request, "people/device.html", {"step": "enter", "wrong": True}, status=400)
    return render(request, "people/device.html", {"step": action, "sign_in": decided})
