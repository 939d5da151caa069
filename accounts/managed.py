"""Claude Code's managed settings: a settings document a team's admins attach, which
signed-in Claude Code fetches from ``/managed/settings`` and applies over the person's own.

The checksum is what Claude Code compares (and sends back in ``If-None-Match``): ``sha256:``
and the hex SHA-256 of the settings serialized with sorted keys and no whitespace.
"""

from __future__ import annotations

import hashlib
import json
import re

from django.core.exceptions import ValidationError

MAX_BYTES = 100_000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STRING_LISTS = ("availableModels", "allowedMcpServers", "deniedMcpServers")
_STRINGS = ("model", "apiKeyHelper", "outputStyle")
# Where the machine's own managed-settings file points Claude Code: a gateway that sent
# these would move its clients elsewhere.
_MACHINE_ONLY = ("forceLoginMethod", "forceLoginGatewayUrl")


def canonical(settings: dict) -> bytes:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checksum(settings: dict) -> str:
    return "sha256:" + hashlib.sha256(canonical(settings)).hexdigest()


def validate(settings) -> None:
    """Raise ValidationError naming what is wrong with a settings document."""
    if not isinstance(settings, dict):
        raise ValidationError("Managed settings must be a JSON object, like settings.json.")
    if len(canonical(settings)) > MAX_BYTES:
        raise ValidationError(f"Managed settings may be at most {MAX_BYTES} bytes.")
    problems = [problem for problem in _problems(settings) if problem]
    if problems:
        raise ValidationError(problems)


def _problems(settings: dict):
    for name in _MACHINE_ONLY:
        if name in settings:
            yield f"{name} belongs in the machines' own managed-settings file, not here."
    env = settings.get("env")
    if env is not None:
        if not isinstance(env, dict):
            yield '"env" must be an object of variable names to strings.'
        else:
            for name, value in env.items():
                if not _ENV_NAME.match(name):
                    yield f'"env": {name!r} is not a variable name.'
                elif not isinstance(value, str):
                    yield f'"env": {name} must be a string, not {type(value).__name__}.'
    permissions = settings.get("permissions")
    if permissions is not None:
        if not isinstance(permissions, dict):
            yield '"permissions" must be an object.'
        else:
            for rule in ("allow", "deny", "ask"):
                if rule in permissions and not _strings(permissions[rule]):
                    yield f'"permissions.{rule}" must be a list of strings.'
    for name in _STRING_LISTS:
        if name in settings and not _strings(settings[name]):
            yield f'"{name}" must be a list of strings.'
    for name in _STRINGS:
        if name in settings and not isinstance(settings[name], str):
            yield f'"{name}" must be a string.'


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
