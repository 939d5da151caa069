"""Spend per person, tool, model and session: the API (/api/spend/breakdown, /api/sessions,
/api/me with a sign-in token), the staff pages (/dashboard/people/) and a person's own page
(/me/: budgets, sessions, keys made and revoked there)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from accounts import services as key_services
from accounts import signin
from accounts.models import ApiKey, Person, Team
from billing.models import UsageEvent
from tests.usage import record_usage

pytestmark = pytest.mark.django_db


def event(n: int, *, person, model="claude-opus-4-8", client="claude-code", session="",
          agent="", cost="1", kind="turn", ago=timedelta(minutes=5), team=None):  # fmt: skip
    record_usage(
        request_id=f"people-{n}", person=person, team=team, model=model, client=client,
        session_id=session, agent_id=agent, endpoint="/v1/messages", kind=kind,
        cost_usd=Decimal(cost), input_tokens=100, output_tokens=10,
        created_at=datetime.now(UTC) - ago,
    )  # fmt: skip


@pytest.fixture
def usage(django_user_model):
    staff = django_user_model.objects.create_user("root", password="pw-root-123", is_staff=True)
    # Everyone's usage is for staff who may view usage events (as /api/usage/ is).
    staff.user_permissions.add(Permission.objects.get(codename="view_usageevent"))
    ann = django_user_model.objects.create_user("ann", "ann@corp.test", "pw-ann-123")
    bob = django_user_model.objects.create_user("bob", "bob@corp.test", "pw-bob-123")
    team = Team.objects.create(
        name="Engineering", budget_usd=Decimal(100), allowed_models=["claude-*"], rpm=30
    )
    team.members.add(ann)
    Person.objects.create(user=ann, default_team=team, budget_usd=Decimal(10))
    # Ann: one Claude Code session with a subagent and a title call, one Codex session.
    event(1, person=ann, session="cc-1", cost="2", ago=timedelta(minutes=50), team=team)
    event(2, person=ann, session="cc-1", agent="agent-7", model="claude-haiku-4-5", cost="0.5",
          ago=timedelta(minutes=40), team=team)  # fmt: skip
    event(3, person=ann, session="cc-1", kind="title", model="claude-haiku-4-5", cost="0.01",
          ago=timedelta(minutes=30), team=team)  # fmt: skip
    event(4, person=ann, session="cx-1", client="codex", model="gpt-5.5", cost="1",
          ago=timedelta(minutes=20), team=team)  # fmt: skip
    # Bob: an SDK app without a session id, and a session older than the report.
    event(5, person=bob, client="anthropic-python", cost="3")
    event(6, person=bob, session="old", cost="50", ago=timedelta(days=45))
    clients = {}
    for user in (staff, ann, bob):
        _, token = key_services.create_api_token(user=user, name="t")
        clients[user.username] = APIClient()
        clients[user.username].credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return {"staff": staff, "ann": ann, "bob": bob, "team": team, "api": clients}


def by_group(rows: list[dict]) -> dict:
    return {row["group"]: row for row in rows}


def test_staff_without_the_usage_permission_see_no_breakdown_and_only_own_sessions(
    usage, django_user_model
):
    bare = django_user_model.objects.create_user("bare", password="pw-bare-123", is_staff=True)
    _, token = key_services.create_api_token(user=bare, name="t")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/spend/breakdown?by=person").status_code == 403
    assert api.get("/api/sessions").json()["results"] == []


def test_staff_break_spend_down_by_person_tool_client_and_model(usage):
    api = usage["api"]["root"]
    people = by_group(api.get("/api/spend/breakdown?by=person").json())
    ann, bob = people[str(usage["ann"].pk)], people[str(usage["bob"].pk)]
    assert ann["name"] == "ann" and ann["cost_usd"] == "3.51000000"
    assert ann["turns"] == 3 and ann["requests"] == 4  # the title call is no turn
    assert bob["cost_usd"] == "3.00000000"  # the 45-day-old session is outside the 30 days
    tools = by_group(api.get("/api/spend/breakdown?by=tool").json())
    assert {name: row["cost_usd"] for name, row in tools.items()} == {
        "Claude Code": "2.51000000", "Codex": "1.00000000", "SDK": "3.00000000",
    }  # fmt: skip
    clients = by_group(api.get("/api/spend/breakdown?by=client").json())
    assert clients["anthropic-python"]["tool"] == "SDK"
    assert clients["codex"]["tool"] == "Codex"
    models = by_group(api.get("/api/spend/breakdown?by=model").json())
    assert models["claude-haiku-4-5"]["requests"] == 2
    since = (datetime.now(UTC) - timedelta(days=60)).date().isoformat()
    longer = by_group(api.get(f"/api/spend/breakdown?by=person&since={since}").json())
    assert longer[str(usage["bob"].pk)]["cost_usd"] == "53.00000000"


@pytest.mark.parametrize(
    "query",
    ["by=colour", "since=yesterday", "since=2026-01-02&until=2026-01-01", "since=2000-01-01"],
)
def test_bad_report_queries_are_400(usage, query):
    assert usage["api"]["root"].get(f"/api/spend/breakdown?{query}").status_code == 400


def test_only_staff_see_the_breakdown(usage):
    assert usage["api"]["ann"].get("/api/spend/breakdown").status_code == 403
    assert APIClient().get("/api/spend/breakdown").status_code == 401


def test_sessions_with_cost_turns_models_agents_and_times(usage):
    api = usage["api"]["root"]
    body = api.get("/api/sessions").json()
    assert body["count"] == 2  # Bob's old session is outside the range; no-session calls too
    rows = {row["session_id"]: row for row in body["results"]}
    claude = rows["cc-1"]
    assert claude["person"] == usage["ann"].pk and claude["person_name"] == "ann"
    assert claude["tool"] == "Claude Code" and claude["turns"] == 2
    assert claude["cost_usd"] == "2.51000000"
    assert claude["models"] == ["claude-haiku-4-5", "claude-opus-4-8"]
    agents = {agent["agent_id"]: agent for agent in claude["agents"]}
    assert agents["agent-7"]["cost_usd"] == "0.50000000" and agents["agent-7"]["turns"] == 1
    assert agents[""]["turns"] == 1
    assert claude["first_at"] < claude["last_at"]
    assert rows["cx-1"]["tool"] == "Codex"
    # Most recent first, one per page.
    first = api.get("/api/sessions?page_size=1").json()
    assert first["results"][0]["session_id"] == "cx-1" and first["next"]
    assert api.get("/api/sessions?page_size=1&page=2").json()["results"][0]["session_id"] == "cc-1"
    filtered = api.get(f"/api/sessions?person={usage['bob'].pk}").json()
    assert filtered["count"] == 0
    assert api.get("/api/sessions?person=x").status_code == 400


def test_a_person_sees_only_their_own_sessions(usage):
    assert usage["api"]["ann"].get("/api/sessions").json()["count"] == 2
    assert usage["api"]["bob"].get("/api/sessions").json()["count"] == 0
    # Bob cannot filter his way into Ann's.
    mine = usage["api"]["bob"].get(f"/api/sessions?person={usage['ann'].pk}").json()
    assert mine["count"] == 0
    assert APIClient().get("/api/sessions").status_code == 401


def test_api_me_takes_a_sign_in_token_as_it_takes_a_key(usage):
    issued = signin.issue(person=usage["ann"], client="claude_code")
    me = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {issued.access_token}")
    assert me.status_code == 200, me.content
    body = me.json()
    assert body["key"] is None and body["sign_in"]["client"] == "claude_code"
    assert body["person"]["username"] == "ann" and body["person"]["teams"] == ["Engineering"]
    assert body["person"]["default_team"] == "Engineering"
    budgets = {row["scope"]: row for row in body["budgets"]}
    assert budgets["person"]["spent_usd"] == "3.51000000"
    assert budgets["person"]["remaining_usd"] == "6.49000000"
    assert budgets["team"]["spent_usd"] == "3.51000000"
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    today = sum(
        e.cost_usd for e in UsageEvent.objects.filter(person=usage["ann"], created_at__gte=midnight)
    )
    assert Decimal(body["spent_today_usd"]) == today
    # The refresh token is not a credential here; a revoked access token stops working.
    refresh = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {issued.refresh_token}")
    assert refresh.status_code in (401, 403)
    signin.revoke(secret=issued.access_token)
    revoked = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {issued.access_token}")
    assert revoked.status_code == 401
    usage["ann"].is_active = False
    usage["ann"].save()
    other = signin.issue(person=usage["ann"], client="cli")
    inactive = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {other.access_token}")
    assert inactive.status_code == 401


def test_api_me_for_a_key_names_its_person(usage):
    _, secret = key_services.create_key(name="ann key", owner=usage["ann"], team=usage["team"])
    body = APIClient().get("/api/me", HTTP_X_API_KEY=secret).json()
    assert body["key"]["name"] == "ann key" and body["sign_in"] is None
    assert body["person"]["username"] == "ann"


def logged_in(username: str, password: str) -> Client:
    client = Client()
    assert client.login(username=username, password=password)
    return client


def test_the_staff_pages_show_people_tools_and_sessions(usage):
    page = logged_in("root", "pw-root-123").get("/dashboard/people/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="by-person"' in html and "ann" in html and "Codex" in html and "cc-1" in html
    assert "agent-7" in html
    detail = logged_in("root", "pw-root-123").get(f"/dashboard/people/{usage['ann'].pk}/")
    assert detail.status_code == 200 and "cx-1" in detail.content.decode()
    assert "$6.4900" in detail.content.decode()  # what is left of Ann's budget
    assert logged_in("ann", "pw-ann-123").get("/dashboard/people/").status_code == 302
    assert Client().get("/dashboard/people/").status_code == 302


def test_me_shows_own_spend_budgets_and_sessions_only(usage):
    assert Client().get("/me/")["Location"].startswith("/login/?next=/me/")
    page = logged_in("ann", "pw-ann-123").get("/me/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "cc-1" in html and "cx-1" in html and "$6.4900" in html
    bob_page = logged_in("bob", "pw-bob-123").get("/me/").content.decode()
    assert "cc-1" not in bob_page and 'id="no-team"' in bob_page


def test_me_makes_a_key_within_the_team_policy_and_revokes_it(usage):
    ann = logged_in("ann", "pw-ann-123")
    made = ann.post("/me/", {"name": "laptop", "team": usage["team"].pk, "budget_usd": "5",
                             "expires_in_days": "30"})  # fmt: skip
    assert made.status_code == 200 and made["Cache-Control"] == "no-store"
    key = ApiKey.objects.get(name="laptop")
    secret = made.context["new_secret"]
    assert key_services.find_key(secret).pk == key.pk
    assert key.owner == usage["ann"] and key.team == usage["team"]
    assert key.allowed_models == ["claude-*"] and key.rpm == 30 and key.budget_usd == 5
    assert key.expires_at is not None
    assert secret not in ann.get("/me/").content.decode()  # shown once

    other = Team.objects.create(name="Finance")
    refused = ann.post("/me/", {"name": "sneaky", "team": other.pk})
    assert refused.status_code == 400 and not ApiKey.objects.filter(name="sneaky").exists()

    bob_key, _ = key_services.create_key(name="bob key", owner=usage["bob"])
    ann.post(f"/me/keys/{bob_key.pk}/revoke")
    bob_key.refresh_from_db()
    assert bob_key.revoked_at is None  # not hers
    assert ann.get(f"/me/keys/{key.pk}/revoke").status_code == 405
    ann.post(f"/me/keys/{key.pk}/revoke")
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_reason == "revoked by its owner"


def test_me_refuses_a_cross_site_post(usage):
    client = Client(enforce_csrf_checks=True)
    client.login(username="ann", password="pw-ann-123")
    assert client.post("/me/", {"name": "x", "team": usage["team"].pk}).status_code == 403
    assert not ApiKey.objects.filter(name="x").exists()
