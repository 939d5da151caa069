"""What a signed-in person's tools fetch or copy: Claude Code's managed settings, served to
its sign-in at ``/managed/settings``, and the /connect/ page with the snippets that point
Claude Code and Codex at this gateway."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts import managed
from accounts.models import Person, Team
from llmproxy.console.device import base_url, live_access_token


def _anthropic_error(kind: str, message: str, status: int) -> JsonResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JsonResponse(body, status=status)


def team_settings(user) -> Team | None:
    """The team whose managed settings apply to a person: their default team if it has
    any, else the first of their teams (by name) that has some."""
    person = Person.objects.select_related("default_team").filter(pk=user.pk).first()
    default = person.default_team if person is not None else None
    if default is not None and default.claude_code_settings is not None:
        return default
    return user.teams.filter(claude_code_settings__isnull=False).order_by("name").first()


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()}


@require_GET
def managed_settings(request: HttpRequest) -> HttpResponse:
    """Claude Code polls this about hourly with its sign-in: a 401 ends the session at once."""
    token = live_access_token(request)
    if token is None:
        return _anthropic_error("authentication_error", "Sign in again with /login.", 401)
    team = team_settings(token.person)
    if team is None:
        return _anthropic_error("not_found_error", "No managed settings apply to you.", 404)
    document = team.claude_code_settings
    checksum = managed.checksum(document)
    headers = {"ETag": f'"{checksum}"', "Cache-Control": "no-cache", "Vary": "Authorization"}
    if checksum in _etags(request.headers.get("If-None-Match", "")):
        return HttpResponse(status=304, headers=headers)
    body = {"uuid": checksum, "checksum": checksum, "settings": document}
    return JsonResponse(body, headers=headers, json_dumps_params={"ensure_ascii": False})


MANAGED_SETTINGS_PATHS = [
    ("Linux", "/etc/claude-code/managed-settings.json"),
    ("macOS", "/Library/Application Support/ClaudeCode/managed-settings.json"),
    ("Windows", r"C:\Program Files\ClaudeCode\managed-settings.json"),
]


def snippets(base: str) -> dict[str, str]:
    """The connect snippets for a gateway at ``base``."""
    login_file = json.dumps({"forceLoginMethod": "gateway", "forceLoginGatewayUrl": base}, indent=2)
    codex = "\n".join(
        [
            'model_provider = "llmproxy"',
            "",
            "[model_providers.llmproxy]",
            'name = "llmproxy"',
            f'base_url = "{base}/v1"',
            'wire_api = "responses"',
            "",
            "[model_providers.llmproxy.auth]",
            'command = "llmproxy"',
            f'args = ["token", "--gateway", "{base}"]',
            "timeout_ms = 10000",
            "refresh_interval_ms = 300000",
        ]
    )
    helper = json.dumps(
        {
            "apiKeyHelper": f"llmproxy token --gateway {base}",
            "env": {
                "ANTHROPIC_BASE_URL": base,
                "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": "300000",
            },
        },
        indent=2,
    )
    return {
        "login_file": login_file,
        "codex": codex,
        "helper": helper,
        "login_command": f"llmproxy login --gateway {base}",
    }


@login_required
def connect_page(request: HttpRequest) -> HttpResponse:
    base = base_url(request)
    context = {**snippets(base), "base": base, "paths": MANAGED_SETTINGS_PATHS}
    return render(request, "people/connect.html", context)
