"""The client setup on the show-once key page and the dashboard's key page is docs/clients.md's."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from django.urls import reverse

from accounts import services as key_services

pytestmark = pytest.mark.django_db

CLIENTS_MD = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
DOCS_GATEWAY = "http://127.0.0.1:8000"
DOCS_KEY = "llmp-..."


def docs_block(section: str, language: str) -> str:
    """The first ```language block under the '## section' heading of docs/clients.md."""
    text = CLIENTS_MD.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", body, re.S).group(1)


def lines(block: str) -> list[str]:
    """Lines as a person reads them: spacing before a comment aside, blank lines kept."""
    return [" ".join(line.split()) for line in block.strip().splitlines()]


def page_blocks(page: str) -> dict[str, str]:
    found = re.findall(r'<pre data-client="([\w-]+)"[^>]*>(.*?)</pre>', page, re.S)
    return {client: html.unescape(text) for client, text in found}


def expected(base_url: str, key_text: str) -> dict[str, list[str]]:
    def fill(block: str) -> list[str]:
        return lines(block.replace(DOCS_GATEWAY, base_url).replace(DOCS_KEY, key_text))

    return {
        "claude-code": fill(docs_block("Claude Code", "sh")),
        "codex": fill(docs_block("Codex", "toml")),
    }


def test_the_docs_blocks_say_what_the_pages_must_show():
    codex = lines(docs_block("Codex", "toml"))
    assert 'model_provider = "llmproxy"' in codex and "[model_providers.llmproxy]" in codex
    for line in ('model = "', 'name = "llmproxy"', f'base_url = "{DOCS_GATEWAY}/v1"',
                 'wire_api = "responses"', 'env_key = "LLMPROXY_API_KEY"',
                 "supports_websockets = true"):  # fmt: skip
        assert any(entry.startswith(line) for entry in codex), line
    claude = lines(docs_block("Claude Code", "sh"))
    assert claude[0] == f"export ANTHROPIC_BASE_URL={DOCS_GATEWAY}"
    assert claude[1].startswith(f"export ANTHROPIC_AUTH_TOKEN={DOCS_KEY}")


def test_the_show_once_page_has_the_docs_setup_with_the_secret(admin_client):
    response = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"name": "laptop", "allowed_models": "", "allowed_endpoints": "", "allowed_tools": "",
         "tags": "", "metadata": "{}", "budget_period": "month", "reserve_mode": "worst"},
    )  # fmt: skip
    assert response.status_code == 200, response.content[:2000]
    page = response.content.decode()
    secret = re.search(r'id="new-key-secret" [^>]*value="(llmp-[^"]+)"', page, re.S).group(1)
    assert key_services.find_key(secret).name == "laptop"
    shown = {client: lines(text) for client, text in page_blocks(page).items()}
    assert shown == expected("http://testserver", secret)


def test_the_dashboard_key_page_has_the_docs_setup_with_the_prefix(admin_client):
    key, secret = key_services.create_key(name="laptop")
    page = admin_client.get(f"/dashboard/keys/{key.pk}/").content.decode()
    shown = {client: lines(text) for client, text in page_blocks(page).items()}
    assert shown == expected("http://testserver", f"{key.prefix}…")
    assert secret not in page


def test_both_pages_use_the_gateway_they_are_served_from(admin_client):
    key, _ = key_services.create_key(name="laptop")
    page = admin_client.get(
        f"/dashboard/keys/{key.pk}/", HTTP_HOST="localhost:8443", secure=True
    ).content.decode()
    codex = page_blocks(page)["codex"]
    assert 'base_url = "https://localhost:8443/v1"' in codex
    assert "export ANTHROPIC_BASE_URL=https://localhost:8443\n" in page_blocks(page)["claude-code"]
