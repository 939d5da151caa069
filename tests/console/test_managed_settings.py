"""Claude Code's managed settings at /managed/settings (shaped like the reference gateway's
answers in tests/samples/claude_gateway/), the validation of a team's settings document, and
the /connect/ page's snippets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from accounts import managed, signin
from accounts.models import Person, Team

pytestmark = pytest.mark.django_db

SAMPLES = Path(__file__).parents[1] / "samples" / "claude_gateway"

# The reference gateway's document and its checksum, as Claude Code 2.1.332 fetched them.
CAPTURE = json.loads((SAMPLES / "21_managed_settings.json").read_text())["response"]["body_json"]
SAMPLE = CAPTURE["settings"]
SAMPLE_CHECKSUM = CAPTURE["checksum"]


@pytest.fixture
def signed_in(alice):
    team = Team.objects.create(name="eng", claude_code_settings=SAMPLE)
    team.members.add(alice)
    Person.objects.create(user=alice, default_team=team)
    return signin.issue(person=alice, client="claude_code").access_token


def get(client, token: str | None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.get("/managed/settings", headers=headers)


def test_the_checksum_is_the_one_claude_code_computes():
    assert managed.checksum(SAMPLE) == SAMPLE_CHECKSUM


def test_settings_with_checksum_and_etag(client, signed_in):
    response = get(client, signed_in)
    assert response.status_code == 200
    assert response.json() == {
        "uuid": SAMPLE_CHECKSUM,
        "checksum": SAMPLE_CHECKSUM,
        "settings": SAMPLE,
    }
    assert response["ETag"] == f'"{SAMPLE_CHECKSUM}"'


def test_if_none_match_gets_304_and_a_star_or_an_old_tag_the_document(client, signed_in):
    same = get(client, signed_in, **{"If-None-Match": f'"{SAMPLE_CHECKSUM}"'})
    assert same.status_code == 304 and same.content == b""
    assert same["ETag"] == f'"{SAMPLE_CHECKSUM}"'
    assert get(client, signed_in, **{"If-None-Match": "*"}).status_code == 200
    old = get(client, signed_in, **{"If-None-Match": '"sha256:0000"'})
    assert old.status_code == 200 and old.json()["settings"] == SAMPLE


def test_a_changed_document_changes_the_checksum(client, signed_in):
    Team.objects.filter(name="eng").update(claude_code_settings={"env": {"DISABLE_UPDATES": "1"}})
    changed = get(client, signed_in, **{"If-None-Match": f'"{SAMPLE_CHECKSUM}"'})
    assert changed.status_code == 200 and changed.json()["checksum"] != SAMPLE_CHECKSUM


def test_no_settings_is_a_404(client, alice):
    token = signin.issue(person=alice, client="claude_code").access_token
    response = get(client, token)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_without_a_live_sign_in_it_is_a_401(client, signed_in, alice):
    assert get(client, None).status_code == 401
    assert get(client, "not-a-real-token").status_code == 401
    alice.is_active = False
    alice.save()
    refused = get(client, signed_in)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (["not", "an", "object"], "JSON object"),
        ({"env": {"X": 1}}, "must be a string"),
        ({"env": {"BAD NAME": "1"}}, "not a variable name"),
        ({"availableModels": "claude-*"}, "list of strings"),
        ({"permissions": {"deny": [1]}}, "list of strings"),
        ({"forceLoginGatewayUrl": "https://elsewhere"}, "machines' own"),
        ({"env": {"X": "y" * 200_000}}, "at most"),
    ],
)
def test_a_bad_document_is_refused_with_a_reason(document, complaint):
    with pytest.raises(ValidationError) as refused:
        Team(name="t", claude_code_settings=document).full_clean()
    assert complaint in str(refused.value)


def test_admins_attach_settings_in_the_admin_and_bad_json_is_refused(admin_client):
    form = {"name": "eng", "budget_period": "month", "claude_code_settings": '{"env": {"X": 1}}'}
    refused = admin_client.post("/admin/accounts/team/add/", form)
    assert refused.status_code == 200 and "must be a string" in refused.content.decode()
    form["claude_code_settings"] = json.dumps(SAMPLE)
    assert admin_client.post("/admin/accounts/team/add/", form).status_code == 302
    assert Team.objects.get(name="eng").claude_code_settings == SAMPLE


def test_the_connect_page_shows_the_snippets_for_this_gateway(client, alice):
    assert client.get("/connect/").status_code == 302  # sign in first
    client.force_login(alice)
    page = client.get("/connect/").content.decode()
    assert "&quot;forceLoginMethod&quot;: &quot;gateway&quot;" in page
    assert "&quot;forceLoginGatewayUrl&quot;: &quot;http://testserver&quot;" in page
    assert "/etc/claude-code/managed-settings.json" in page
    assert "[model_providers.llmproxy.auth]" in page
    assert (
        "args = [&quot;token&quot;, &quot;--gateway&quot;, &quot;http://testserver&quot;]" in page
    )
    assert "apiKeyHelper" in page and "llmproxy login --gateway http://testserver" in page
