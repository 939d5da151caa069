"""The permission cast of the management API tests: a superuser (root), staff with every
model permission (manager), staff with only the view permissions (viewer), staff with none
(clerk), a key's owner (alice) and an outsider (charlie)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from rest_framework.test import APIClient

from accounts import services as key_services
from accounts.models import Team
from llmproxy.gateway import services as provider_services

APPS = ["accounts", "billing", "llmproxy", "auth"]


def group(name: str, codename_prefix: str = "") -> Group:
    crowd = Group.objects.create(name=name)
    perms = Permission.objects.filter(content_type__app_label__in=APPS)
    if codename_prefix:
        perms = perms.filter(codename__startswith=codename_prefix)
    crowd.permissions.set(perms)
    return crowd


@pytest.fixture
def perm_cast(django_user_model):
    users = {
        "root": django_user_model.objects.create_superuser("root", "root@example.com", None),
        "manager": django_user_model.objects.create_user("manager", is_staff=True),
        "viewer": django_user_model.objects.create_user("viewer", is_staff=True),
        "clerk": django_user_model.objects.create_user("clerk", is_staff=True),
        "alice": django_user_model.objects.create_user("alice"),
        "charlie": django_user_model.objects.create_user("charlie"),
    }
    users["manager"].groups.add(group("managers"))
    users["viewer"].groups.add(group("viewers", "view_"))
    team = Team.objects.create(name="platform")
    team.members.add(users["alice"])
    key, _ = key_services.create_key(
        name="alice laptop", owner=users["alice"], team=team, budget_usd=Decimal(10)
    )
    provider, _ = provider_services.upsert_provider(
        name="anthropic", kind="anthropic", base_url="https://api.anthropic.com",
        credential="sk-ant-org-secret",
    )  # fmt: skip
    clients = {}
    for name, user in users.items():
        _, token = key_services.create_api_token(user=user, name="t")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        clients[name] = client
    return {"users": users, "clients": clients, "key": key, "team": team, "provider": provider}
