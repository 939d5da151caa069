"""People on the management API: person policies and budgets, team policies, memberships and
sign-ins, tried by the permission cast (test_api_permissions.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts import signin
from accounts.models import AuditEntry, Person, SignInToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(perm_cast):
    return perm_cast


def status_of(cast, who, method, path, body=None) -> int:
    return getattr(cast["clients"][who], method)(path, body, format="json").status_code


@pytest.fixture
def people(cast):
    alice, charlie = cast["users"]["alice"], cast["users"]["charlie"]
    Person.objects.create(user=alice, budget_usd=Decimal(20), rpm=30)
    Person.objects.create(user=charlie)
    issued = signin.issue(person=alice, client="claude_code")
    signin.issue(person=charlie, client="cli")
    return {**cast, "issued": issued}


# --- people -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "seen"),
    [("root", 2), ("manager", 2), ("viewer", 2), ("clerk", 0), ("alice", 1), ("charlie", 1)],
)
def test_people_are_listed_by_the_view_permission_or_their_own(people, who, seen):
    response = people["clients"][who].get("/api/people/")
    assert response.status_code == 200 and response.json()["count"] == seen
    if who == "alice":
        row = response.json()["results"][0]
        assert (row["username"], row["budget_usd"], row["rpm"]) == ("alice", "20.0000", 30)
        assert row["teams"] == [people["team"].pk]


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 200), ("manager", 200), ("viewer", 403), ("clerk", 403), ("alice", 403),
     ("charlie", 403)],
)  # fmt: skip
def test_a_persons_policy_and_budget_need_the_change_permission(people, who, status):
    alice = people["users"]["alice"]
    change = {"budget_usd": "500", "allowed_models": ["claude-*"], "budget_period": "week"}
    assert status_of(people, who, "patch", f"/api/people/{alice.pk}/", change) == status
    person = Person.objects.get(user=alice)
    assert (person.budget_usd == Decimal(500)) == (status == 200)
    assert person.allowed_models == (["claude-*"] if status == 200 else None)


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 201), ("manager", 201), ("viewer", 403), ("clerk", 403), ("alice", 403),
     ("charlie", 403)],
)  # fmt: skip
def test_a_person_row_is_added_with_the_add_permission(people, who, status):
    bob = type(people["users"]["alice"]).objects.create_user("bob")
    body = {"user": bob.pk, "budget_usd": "3", "max_concurrent": 2}
    assert status_of(people, who, "post", "/api/people/", body) == status
    assert Person.objects.filter(user=bob).exists() == (status == 201)


def test_person_input_is_checked(people):
    client, alice = people["clients"]["root"], people["users"]["alice"]
    other = people["team"].__class__.objects.create(name="elsewhere")
    path = f"/api/people/{alice.pk}/"
    assert client.patch(path, {"default_team": other.pk}, format="json").status_code == 400
    assert client.patch(path, {"default_team": people["team"].pk}, format="json").status_code == 200
    assert client.patch(path, {"budget_usd": "-1"}, format="json").status_code == 400
    assert client.patch(path, {"user": people["users"]["charlie"].pk},
                        format="json").status_code == 400  # fmt: skip
    assert client.post("/api/people/", {"user": alice.pk}, format="json").status_code == 400
    assert client.patch(path, {"allowed_models": "claude-*"}, format="json").status_code == 400
    assert client.get("/api/people/abc/").status_code == 404


# --- teams: policies and budgets ----------------------------------------------------------


def test_team_policies_are_read_and_written_on_the_team(people):
    team = people["team"]
    client = people["clients"]["manager"]
    change = {"allowed_models": ["claude-*"], "rpm": 120, "max_concurrent": 4, "budget_usd": "50"}
    response = client.patch(f"/api/teams/{team.pk}/", change, format="json")
    assert response.status_code == 200, response.content
    team.refresh_from_db()
    assert (team.allowed_models, team.rpm, team.max_concurrent) == (["claude-*"], 120, 4)
    mine = people["clients"]["alice"].get(f"/api/teams/{team.pk}/").json()
    assert mine["allowed_models"] == ["claude-*"] and mine["allowed_tools"] is None
    assert status_of(people, "alice", "patch", f"/api/teams/{team.pk}/", {"rpm": 1}) == 403


# --- memberships --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "seen", "write"),
    [("root", 1, 201), ("manager", 1, 201), ("viewer", 1, 403), ("clerk", 0, 403),
     ("alice", 1, 403), ("charlie", 0, 403)],
)  # fmt: skip
def test_memberships_need_the_team_permissions(people, who, seen, write):
    assert people["clients"][who].get("/api/memberships/").json()["count"] == seen
    team, charlie = people["team"], people["users"]["charlie"]
    body = {"team": team.pk, "user": charlie.pk}
    assert status_of(people, who, "post", "/api/memberships/", body) == write
    assert team.members.filter(pk=charlie.pk).exists() == (write == 201)


def test_removing_a_member_clears_their_default_team_and_is_audited(people):
    team, alice = people["team"], people["users"]["alice"]
    Person.objects.filter(user=alice).update(default_team=team)
    row = people["clients"]["root"].get(f"/api/memberships/?user={alice.pk}").json()["results"]
    assert [(r["team"], r["user"]) for r in row] == [(team.pk, alice.pk)]
    for who in ("viewer", "clerk", "alice", "charlie"):
        assert status_of(people, who, "delete", f"/api/memberships/{row[0]['id']}/") in (403, 404)
    assert status_of(people, "root", "delete", f"/api/memberships/{row[0]['id']}/") == 204
    assert not team.members.filter(pk=alice.pk).exists()
    assert Person.objects.get(user=alice).default_team is None
    audited = AuditEntry.objects.filter(content_type__model="team", object_id=str(team.pk))
    assert audited.get().changes == {"members": {"old": [alice.pk], "new": []}}
    again = {"team": team.pk, "user": alice.pk}
    assert status_of(people, "root", "post", "/api/memberships/", again) == 201
    assert status_of(people, "root", "post", "/api/memberships/", again) == 400


# --- sign-ins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "seen"),
    [("root", 4), ("manager", 4), ("viewer", 4), ("clerk", 0), ("alice", 2), ("charlie", 2)],
)
def test_sign_ins_are_listed_without_secrets(people, who, seen):
    response = people["clients"][who].get("/api/sign-ins/")
    assert response.status_code == 200 and response.json()["count"] == seen
    text = response.content.decode()
    issued = people["issued"]
    assert issued.access_token not in text and issued.refresh_token not in text
    for token in SignInToken.objects.all():
        assert token.digest not in text
    for row in response.json()["results"]:
        assert "digest" not in row and row["state"] == "live"


@pytest.mark.parametrize(
    ("who", "status"),
    [("root", 200), ("manager", 200), ("viewer", 403), ("clerk", 404), ("alice", 200),
     ("charlie", 404)],
)  # fmt: skip
def test_revoking_a_sign_in_needs_the_change_permission_or_ownership(people, who, status):
    alices = SignInToken.objects.filter(person=people["users"]["alice"])
    access = alices.get(kind="access")
    response = people["clients"][who].post(f"/api/sign-ins/{access.pk}/revoke/", {},
                                           format="json")  # fmt: skip
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"revoked": 2}  # the whole sign-in: access and refresh
        assert not alices.live().exists()
        with pytest.raises(signin.SignInError):
            signin.refresh(secret=people["issued"].refresh_token)
    else:
        assert alices.live().count() == 2


def test_sign_ins_filter_by_person_and_liveness(people):
    client, alice = people["clients"]["root"], people["users"]["alice"]
    assert client.get(f"/api/sign-ins/?person={alice.pk}").json()["count"] == 2
    signin.revoke(secret=people["issued"].refresh_token)
    live = client.get(f"/api/sign-ins/?person={alice.pk}&live=true").json()
    assert live["count"] == 0
    assert client.get("/api/sign-ins/?live=maybe").status_code == 400
    assert client.get("/api/sign-ins/?person=x").status_code == 400
    assert client.post("/api/sign-ins/", {}, format="json").status_code == 405


def test_the_people_endpoints_are_in_the_schema(people):
    paths = APIClient().get("/api/schema/?format=json").json()["paths"]
    assert {"/api/people/", "/api/people/{user}/", "/api/memberships/", "/api/sign-ins/",
            "/api/sign-ins/{id}/revoke/", "/api/audit/"} <= set(paths)  # fmt: skip


def test_person_changes_on_the_api_are_audited(people):
    alice = people["users"]["alice"]
    people["clients"]["manager"].patch(
        f"/api/people/{alice.pk}/", {"budget_usd": "7", "tpm": 1000}, format="json"
    )
    entry = AuditEntry.objects.get(content_type__model="person", object_id=str(alice.pk))
    assert (entry.actor, entry.via) == (people["users"]["manager"], "api")
    assert entry.changes == {
        "budget_usd": {"old": "20.0000", "new": "7.0000"},
        "tpm": {"old": None, "new": 1000},
    }
    access = SignInToken.objects.filter(person=alice, kind="access").get()
    people["clients"]["alice"].post(f"/api/sign-ins/{access.pk}/revoke/", {}, format="json")
    revoked = AuditEntry.objects.filter(content_type__model="signintoken", action="update")
    assert revoked.count() == 2 and all(e.actor == alice for e in revoked)
    assert all("digest" not in e.changes for e in revoked)
