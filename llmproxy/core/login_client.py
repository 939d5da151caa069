"""``llmproxy login`` / ``llmproxy token`` / ``llmproxy logout``: a person's sign-in to an
llmproxy gateway from a terminal, for Codex (its ``[model_providers.<id>.auth] command``)
and for Claude Code's ``apiKeyHelper``.

``login`` runs the OAuth 2.0 device grant (RFC 8628) against the gateway, as Claude Code's
``/login`` does, and stores the tokens in the person's config directory
(``$XDG_CONFIG_HOME/llmproxy/credentials.json``, mode 0600). ``token`` prints a current
access token: it refreshes one that is about to expire, and checks a token it already handed
out with the gateway (Codex asks again after a 401), so a revoked sign-in ends with a
non-zero exit and a message to run ``llmproxy login``. ``logout`` revokes both tokens
(RFC 7009) and forgets them.

This runs on developers' machines: it needs neither Django nor a database, only the
standard library and httpx.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import time
import webbrowser
from pathlib import Path
from urllib.parse import urlsplit

import httpx

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one terminal at a time
    fcntl = None

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN = 300  # seconds: refresh a token with less than this left, as Claude Code does
TIMEOUT = httpx.Timeout(10.0)
EXIT_SIGNED_OUT = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class LoginError(Exception):
    def __init__(self, message: str, code: int = EXIT_SIGNED_OUT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- where credentials live ---------------------------------------------------------------


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmproxy"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def load() -> dict:
    try:
        data = json.loads(credentials_path().read_text())
    except FileNotFoundError:
        return {"gateways": {}}
    except (OSError, ValueError) as error:
        raise LoginError(
            f"Cannot read {credentials_path()} ({error}): run `llmproxy login`."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("gateways"), dict):
        return {"gateways": {}}
    return data


def save(data: dict) -> None:
    """Written to a new file with mode 0600 and moved over the old one: never readable by
    others, never half-written."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credentials_path()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


@contextlib.contextmanager
def locked():
    """One process at a time refreshes: two refreshing the same token would look like a
    replay to the gateway, which then ends the sign-in."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(directory / "credentials.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the gateway -------------------------------------------------------------------------


def normalize_gateway(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoginError(
            f"{url!r} is not a gateway URL such as https://llm.example.com", EXIT_USAGE
        )
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise LoginError(
            f"{url}: sign-in tokens travel only over https (plain http only to this machine).",
            EXIT_USAGE,
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_origin(url: object, base: str) -> bool:
    if not isinstance(url, str):
        return False
    one, other = urlsplit(url), urlsplit(base)
    return (one.scheme, one.netloc) == (other.scheme, other.netloc)


def discover(client: httpx.Client, gateway: str) -> dict[str, str]:
    """The gateway's endpoints (RFC 8414), each on the gateway's own origin."""
    endpoints = {
        "device_authorization_endpoint": f"{gateway}/oauth/device_authorization",
        "token_endpoint": f"{gateway}/oauth/token",
        "revocation_endpoint": f"{gateway}/oauth/revoke",
        "userinfo_endpoint": f"{gateway}/oauth/userinfo",
    }
    response = client.get(f"{gateway}/.well-known/oauth-authorization-server")
    document = response.json() if response.status_code == 200 else {}
    for name in endpoints:
        if _same_origin(document.get(name), gateway):
            endpoints[name] = document[name]
    return endpoints


def _client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, headers={"User-Agent": "llmproxy-login/1"})


def _oauth_error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""


def _unreachable(gateway: str, error: Exception) -> LoginError:
    return LoginError(f"Cannot reach {gateway} ({error}).", EXIT_UNREACHABLE)


def _signed_out(gateway: str, why: str) -> LoginError:
    return LoginError(f"{why} Run `llmproxy login --gateway {gateway}` to sign in.")


# --- the commands ------------------------------------------------------------------------


def login(gateway: str, *, open_browser: bool = False) -> int:
    gateway = normalize_gateway(gateway)
    try:
        with _client() as client:
            endpoints = discover(client, gateway)
            started = client.post(
                endpoints["device_authorization_endpoint"], data={"surface": "cli"}
            )
            if started.status_code != 200:
                raise LoginError(f"{gateway} refused to start a sign-in ({started.status_code}).")
            grant = started.json()
            page = grant.get("verification_uri_complete") or grant["verification_uri"]
            _say(f"To sign in, open {page}")
            _say(f"and check that it shows the code {grant['user_code']}, then approve it.")
            if open_browser:
                webbrowser.open(page)
            tokens = _wait_for_approval(client, endpoints["token_endpoint"], grant)
    except httpx.HTTPError as error:
        raise _unreachable(gateway, error) from None
    with locked():
        data = load()
        data["gateways"][gateway] = _entry(endpoints, tokens)
        data["default"] = gateway
        save(data)
    who = tokens.get("email")
    _say(f"Signed in to {gateway}" + (f" as {who}." if who else "."))
    return 0


def _wait_for_approval(client: httpx.Client, token_endpoint: str, grant: dict) -> dict:
    interval = max(1, int(grant.get("interval", 5)))
    deadline = time.monotonic() + int(grant.get("expires_in", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        response = client.post(
            token_endpoint, data={"grant_type": DEVICE_GRANT, "device_code": grant["device_code"]}
        )
        if response.status_code == 200:
            return response.json()
        error = _oauth_error(response)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5  # RFC 8628, 3.5
            continue
        if error == "access_denied":
            raise LoginError("The sign-in was denied.")
        if error == "expired_token":
            raise LoginError("The code expired before it was approved; run `llmproxy login` again.")
        raise LoginError(f"The gateway answered {response.status_code} {error or ''}".strip() + ".")
    raise LoginError("The code expired before it was approved; run `llmproxy login` again.")


def _entry(endpoints: dict[str, str], tokens: dict) -> dict:
    return {
        **endpoints,
        "access_token": tokens["access_token"],
        "refresh_token": tokens.get("refresh_token"),
        "expires_at": time.time() + int(tokens.get("expires_in", 3600)),
        "email": tokens.get("email", ""),
        "handed_out": False,
    }


def _pick(data: dict, gateway: str | None) -> tuple[str, dict]:
    gateway = normalize_gateway(gateway) if gateway else data.get("default")
    if not gateway:
        raise LoginError("Not signed in. Run `llmproxy login --gateway URL` to sign in.")
    entry = data["gateways"].get(gateway)
    if not isinstance(entry, dict) or not entry.get("access_token"):
        raise _signed_out(gateway, f"Not signed in to {gateway}.")
    return gateway, entry


def token(gateway: str | None = None) -> int:
    with locked():
        data = load()
        gateway, entry = _pick(data, gateway)
        try:
            entry = _current(gateway, entry)
        except LoginError as error:
            if error.code == EXIT_SIGNED_OUT:
                data["gateways"].pop(gateway, None)
                save(data)
            raise
        entry["handed_out"] = True
        data["gateways"][gateway] = entry
        save(data)
    print(entry["access_token"], flush=True)
    return 0


def _current(gateway: str, entry: dict) -> dict:
    """A live access token: refreshed when about to expire; one handed out before is
    checked with the gateway first (Codex asks again after the gateway refused it)."""
    with _client() as client:
        try:
            if float(entry.get("expires_at", 0)) - time.time() < REFRESH_MARGIN:
                return _refresh(client, gateway, entry)
            if entry.get("handed_out") and not _still_valid(client, entry):
                return _refresh(client, gateway, entry)
        except httpx.HTTPError as error:
            raise _unreachable(gateway, error) from None
    return entry


def _still_valid(client: httpx.Client, entry: dict) -> bool:
    response = client.get(
        entry["userinfo_endpoint"], headers={"Authorization": f"Bearer {entry['access_token']}"}
    )
    return response.status_code != 401


def _refresh(client: httpx.Client, gateway: str, entry: dict) -> dict:
    if not entry.get("refresh_token"):
        raise _signed_out(gateway, "Your sign-in expired.")
    response = client.post(
        entry["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": entry["refresh_token"]},
    )
    if response.status_code != 200:
        error = _oauth_error(response)
        if response.status_code in (400, 401) or error == "invalid_grant":
            raise _signed_out(gateway, f"Your sign-in to {gateway} has ended (revoked or expired).")
        raise LoginError(
            f"{gateway} answered {response.status_code} to a refresh.", EXIT_UNREACHABLE
        )
    tokens = response.json()
    return {**_entry(entry, tokens), "handed_out": False}


def logout(gateway: str | None = None) -> int:
    with locked():
        data = load()
        try:
            gateway, entry = _pick(data, gateway)
        except LoginError:
            _say("Not signed in.")
            return 0
        data["gateways"].pop(gateway, None)
        if data.get("default") == gateway:
            data.pop("default")
        save(data)
    try:
        with _client() as client:
            for secret, hint in ((entry.get("access_token"), "access_token"),
                                 (entry.get("refresh_token"), "refresh_token")):  # fmt: skip
                if secret:
                    client.post(
                        entry["revocation_endpoint"],
                        data={"token": secret, "token_type_hint": hint},
                    )
    except httpx.HTTPError as error:
        _say(
            f"Signed out here; could not tell {gateway} ({error}): its tokens expire on their own."
        )
        return 0
    _say(f"Signed out of {gateway}.")
    return 0


def run(command: str, gateway: str | None, *, open_browser: bool = False) -> int:
    """Run a command; its failures become a message on stderr and an exit status."""
    try:
        if command == "login":
            if not gateway:
                raise LoginError("llmproxy login needs --gateway URL.", EXIT_USAGE)
            return login(gateway, open_browser=open_browser)
        if command == "token":
            return token(gateway)
        return logout(gateway)
    except LoginError as error:
        _say(f"llmproxy: {error.message}")
        return error.code
    except KeyboardInterrupt:
        return 130
