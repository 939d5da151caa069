"""A real OpenID provider for the single sign-on tests: npm oidc-provider (a devDependency of
clients/, installed by ``make clients``) run by tests/oidc/provider.mjs on a free loopback
port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
SCRIPT = Path(__file__).with_name("provider.mjs")
CLIENT_ID = "llmproxy-web"
CLIENT_SECRET = "test-client-secret-for-the-oidc-provider"


def require_provider() -> str:
    node = shutil.which("node")
    installed = (CLIENTS / "node_modules" / "oidc-provider" / "package.json").exists()
    if node and installed:
        return node
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("node and clients/node_modules/oidc-provider are required (make clients)")
    pytest.skip("node or oidc-provider is not installed (make clients)")


class OidcProvider:
    """``with OidcProvider(accounts, redirect_uri) as idp:`` — ``idp.issuer`` is its URL;
    ``idp.change(sub, groups=[...])`` or ``idp.change(sub, disabled=True)`` edits an account
    while it runs."""

    def __init__(self, accounts: dict[str, dict], redirect_uris: list[str]) -> None:
        self.node = require_provider()
        self.config = {
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": redirect_uris,
                }
            ],
            "accounts": accounts,
        }
        self.issuer = ""
        self._dir = tempfile.TemporaryDirectory(prefix="llmproxy-oidc-")

    def __enter__(self) -> OidcProvider:
        config = Path(self._dir.name) / "config.json"
        config.write_text(json.dumps(self.config))
        self.process = subprocess.Popen(
            [self.node, str(SCRIPT), str(config), str(CLIENTS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            raise RuntimeError(f"the OpenID provider did not start: {self.process.stderr.read()}")
        self.issuer = json.loads(line)["issuer"]
        return self

    def change(self, sub: str, **changes) -> None:
        response = httpx.post(f"{self.issuer}/test/accounts/{sub}", json=changes, timeout=10)
        response.raise_for_status()

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()
        self._dir.cleanup()
