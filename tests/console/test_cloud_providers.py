"""Adding providers of the cloud kinds through the API, the admin and addprovider: each
kind's options and credential are checked when saved, and never read back."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from llmproxy.gateway.models import Provider
from tests.fakes import fake_bedrock as fb
from tests.fakes import fake_vertex as fv

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):
    client = APIClient()
    client.force_authenticate(
        django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    )  # providers are a superuser's to change
    return client


def post(client, **body):
    return client.post("/api/providers/", {"base_url": "https://cloud.example", **body},
                       format="json")  # fmt: skip


def test_a_bedrock_provider_may_rely_on_the_standard_aws_sources(root):
    created = post(root, name="bedrock", kind="bedrock", options={"region": "eu-central-1"})
    assert created.status_code == 201, created.content
    assert created.json()["options"] == {"region": "eu-central-1"}
    assert created.json()["has_credential"] is False
    missing = post(root, name="bedrock2", kind="bedrock", options={})
    assert missing.status_code == 400 and "region" in missing.json()["options"][0]


def test_a_vertex_provider_needs_a_service_account_key(root):
    bad = post(root, name="v", kind="vertex", credential="hunter2", options={"region": "us-east5"})
    assert bad.status_code == 400
    assert (
        "service account" in bad.json()["credential"][0] and "hunter2" not in bad.content.decode()
    )
    key, _ = fv.service_account("https://oauth2.example/token")
    created = post(root, name="v", kind="vertex", credential=key, options={"region": "us-east5"})
    assert created.status_code == 201, created.content
    assert "PRIVATE KEY" not in created.content.decode()
    assert "PRIVATE KEY" not in root.get("/api/providers/").content.decode()


def test_an_azure_provider_refuses_an_unknown_option(root):
    bad = post(root, name="a", kind="azure", credential="k", options={"deployment": "x"})
    assert bad.status_code == 400 and "deployment" in bad.json()["options"][0]


def test_addprovider_takes_options_and_a_credential_file(tmp_path):
    out = io.StringIO()
    call_command(
        "addprovider", "bedrock-eu", "--kind", "bedrock", "--base-url",
        "https://bedrock-runtime.eu-central-1.amazonaws.com", "--api-key", fb.CREDENTIAL,
        "--option", "region=eu-central-1", "--option", 'anthropic_betas=["a-beta"]',
        stdout=out,
    )  # fmt: skip
    provider = Provider.objects.get(name="bedrock-eu")
    assert provider.options == {"region": "eu-central-1", "anthropic_betas": ["a-beta"]}
    assert fb.SECRET_ACCESS_KEY not in out.getvalue()
    key_file = tmp_path / "sa.json"
    key_file.write_text(fv.service_account("https://oauth2.example/token")[0])
    call_command(
        "addprovider", "vertex", "--kind", "vertex", "--base-url",
        "https://us-east5-aiplatform.googleapis.com", "--credential-file", str(key_file),
        "--option", "region=us-east5", stdout=io.StringIO(),
    )  # fmt: skip
    assert Provider.objects.get(name="vertex").credential.startswith("{")
    with pytest.raises(CommandError, match="region"):
        call_command("addprovider", "b", "--kind", "bedrock", "--base-url", "https://x.example",
                     stdout=io.StringIO())  # fmt: skip
    with pytest.raises(CommandError, match="needs its credential"):
        call_command("addprovider", "a", "--kind", "anthropic", "--base-url", "https://x.example",
                     stdout=io.StringIO())  # fmt: skip


def test_the_admin_form_checks_the_kinds_options(django_user_model, client):
    from llmproxy.gateway.admin import ProviderForm

    form = ProviderForm(data={"name": "b", "kind": "bedrock", "base_url": "https://x.example",
                              "options": "{}", "extra_headers": "{}", "enabled": True})  # fmt: skip
    assert not form.is_valid() and "region" in str(form.errors["options"])
    form = ProviderForm(data={"name": "b", "kind": "bedrock", "base_url": "https://x.example",
                              "options": '{"region": "us-east-1"}', "extra_headers": "{}",
                              "enabled": True})  # fmt: skip
    assert form.is_valid(), form.errors
