"""Credentials on the management API: a virtual key is told what to use instead."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from accounts import services as key_services

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("get", "/api/"),
    ("get", "/api/keys/"),
    ("post", "/api/keys/"),
    ("get", "/api/usage/"),
    ("get", "/api/spend"),
    ("get", "/api/teams/"),
    ("get", "/api/providers/"),
    ("get", "/api/tokens/"),
    ("post", "/api/tokens/"),
    ("get", "/api/schema/?format=json"),
]


@pytest.fixture
def secrets(django_user_model):
    staff = django_user_model.objects.create_user("root", is_staff=True)
    key, secret = key_services.create_key(name="alice laptop", owner=staff)
    _, token = key_services.create_api_token(user=staff, name="t")
    return {"key": key, "secret": secret, "token": token}


def call(method: str, path: str, **headers):
    body = {"name": "x"} if method == "post" else None
    return getattr(APIClient(), method)(path, body, **headers)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("header", ["HTTP_X_API_KEY", "HTTP_AUTHORIZATION"])
def test_a_virtual_key_is_told_the_api_wants_a_token(secrets, method, path, header):
    value = secrets["secret"] if header == "HTTP_X_API_KEY" else f"Bearer {secrets['secret']}"
    response = call(method, path, **{header: value})
    assert response.status_code == 401, response.content
    detail = json.loads(response.content)["detail"]  # the schema's media type is not JSON's
    assert "virtual key" in detail and "management API token" in detail
    assert "llmpt-" in detail and "/api/tokens/" in detail and "admin" in detail
    assert response["WWW-Authenticate"] == "Bearer"


def test_me_still_takes_the_virtual_key(secrets):
    for headers in ({"HTTP_X_API_KEY": secrets["secret"]},
                    {"HTTP_AUTHORIZATION": f"Bearer {secrets['secret']}"}):  # fmt: skip
        response = APIClient().get("/api/me", **headers)
        assert response.status_code == 200 and response.json()["key"]["name"] == "alice laptop"


@pytest.mark.parametrize("bearer", ["garbage", "llmpt-garbage", "sk-ant-api03-something"])
def test_a_garbage_bearer_is_an_invalid_token(secrets, bearer):
    response = APIClient().get("/api/keys/", HTTP_AUTHORIZATION=f"Bearer {bearer}")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API token."}
    assert response["WWW-Authenticate"] == "Bearer"


def test_no_credentials_and_a_real_token_are_as_before(secrets):
    anonymous = APIClient().get("/api/keys/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Bearer"
    assert anonymous.json() == {"detail": "Authentication credentials were not provided."}
    # A token in the Authorization header wins over a virtual key in x-api-key.
    both = APIClient().get(
        "/api/keys/",
        HTTP_AUTHORIZATION=f"Bearer {secrets['token']}",
        HTTP_X_API_KEY=secrets["secret"],
    )
    assert both.status_code == 200 and both.json()["count"] == 1
