"""Signing in with the OAuth 2.0 device grant, as Claude Code's /login sends it (the requests
are shaped like the captures in tests/samples/claude_gateway/), and its security: code reuse,
expiry, polling too fast, denied codes, cross-site posts to /device, guessing user codes,
refresh replay, a disabled person."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import httpx
import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from accounts import device
from accounts.models import DeviceAuthorization, Person, SignInToken
from tests.fakes import MODEL

pytestmark = pytest.mark.django_db

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FORM = "application/x-www-form-urlencoded"
HOST = "http://testserver"


@pytest.fixture(autouse=True)
def _no_counted_attempts():
    """Wrong-code counters live in the cache, which outlives each test's database."""

    def clear():
        cache.delete_many(
            device._attempt_keys(["ip:127.0.0.1", *(f"person:{n}" for n in range(1, 400))])
        )

    clear()
    yield
    clear()


def start(client: Client, body: str = "surface=claude_code") -> dict:
    response = client.post("/oauth/device_authorization", body, content_type=FORM)
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return response.json()


def poll(client: Client, device_code: str):
    body = f"grant_type={GRANT.replace(':', '%3A')}&device_code={device_code}"
    return client.post("/oauth/token", body, content_type=FORM)


def approve(browser: Client, user_code: str, action: str = "approve"):
    return browser.post("/device", {"user_code": user_code, "action": action})


def rewind_last_poll(device_code: str, seconds: float = 10) -> None:
    """As if the client had waited its interval since its last poll."""
    row = DeviceAuthorization.objects.get(device_digest=device._digest_of_device(device_code))
    row.last_polled_at = timezone.now() - timedelta(seconds=seconds)
    row.save(update_fields=["last_polled_at"])


@pytest.fixture
def browser(alice) -> Client:
    signed_in = Client()
    signed_in.force_login(alice)
    return signed_in


def test_discovery_names_same_origin_endpoints_and_no_authorization_endpoint(client):
    doc = client.get("/.well-known/oauth-authorization-server").json()
    assert doc["issuer"] == HOST
    assert doc["device_authorization_endpoint"] == HOST + "/oauth/device_authorization"
    assert doc["token_endpoint"] == HOST + "/oauth/token"
    assert doc["revocation_endpoint"] == HOST + "/oauth/revoke"
    assert doc["grant_types_supported"] == [GRANT, "refresh_token"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none"]
    assert "authorization_endpoint" not in doc


def test_device_authorization_takes_claude_codes_request_and_stores_only_digests(client):
    started = start(client)
    assert set(started) >= {"device_code", "user_code", "verification_uri", "expires_in"}
    assert re.fullmatch(
        r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", started["user_code"]
    )
    assert len(started["device_code"]) >= 43  # 256 bits
    assert started["verification_uri"] == HOST + "/device"
    assert started["verification_uri_complete"] == f"{HOST}/device?user_code={started['user_code']}"
    assert (started["expires_in"], started["interval"]) == (600, 5)
    row = DeviceAuthorization.objects.get()
    assert row.client == "claude_code" and row.status == "pending"
    stored = " ".join(str(value) for value in row.__dict__.values())
    assert started["device_code"] not in stored and started["user_code"] not in stored
    assert started["user_code"].replace("-", "") not in stored


def test_an_unknown_surface_is_a_clear_error(client):
    response = client.post("/oauth/device_authorization", "surface=../../x", content_type=FORM)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert client.get("/oauth/device_authorization").status_code == 405


def test_the_whole_grant_and_the_code_is_single_use(client, browser, alice):
    started = start(client)
    pending = poll(client, started["device_code"])
    assert (pending.status_code, pending.json()["error"]) == (400, "authorization_pending")

    # Opening the pre-filled link shows the code and approves nothing.
    page = browser.get("/device?user_code=" + started["user_code"])
    assert page.status_code == 200 and started["user_code"] in page.content.decode()
    # Entering it shows what asks to sign in, and still approves nothing.
    confirm = browser.post("/device", {"user_code": started["user_code"].lower().replace("-", "")})
    assert confirm.status_code == 200 and "Claude Code" in confirm.content.decode()
    rewind_last_poll(started["device_code"])
    assert poll(client, started["device_code"]).json()["error"] == "authorization_pending"

    assert approve(browser, started["user_code"]).status_code == 200
    rewind_last_poll(started["device_code"])
    tokens = poll(client, started["device_code"])
    assert tokens.status_code == 200, tokens.content
    body = tokens.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["access_token"].startswith("llmpa-") and body["refresh_token"].startswith("llmpr-")
    assert body["email"] == alice.email
    access = SignInToken.objects.get(kind="access")
    assert access.person == alice and access.client == "claude_code"

    rewind_last_poll(started["device_code"])
    reused = poll(client, started["device_code"])
    assert (reused.status_code, reused.json()["error"]) == (400, "expired_token")
    assert SignInToken.objects.count() == 2  # no second pair
    # ...and the code cannot be approved again either.
    assert approve(browser, started["user_code"]).status_code == 400


def test_polling_faster_than_the_interval_is_told_to_slow_down(client):
    started = start(client)
    assert poll(client, started["device_code"]).json()["error"] == "authorization_pending"
    fast = poll(client, started["device_code"])
    assert (fast.status_code, fast.json()["error"]) == (429, "slow_down")
    rewind_last_poll(started["device_code"])
    assert poll(client, started["device_code"]).json()["error"] == "authorization_pending"


def test_an_expired_code_can_be_neither_approved_nor_redeemed(client, browser):
    started = start(client)
    DeviceAuthorization.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert approve(browser, started["user_code"]).status_code == 400
    expired = poll(client, started["device_code"])
    assert (expired.status_code, expired.json()["error"]) == (400, "expired_token")
    assert not SignInToken.objects.exists()


def test_a_denied_code_answers_access_denied_once(client, browser):
    started = start(client)
    denied = approve(browser, started["user_code"], "deny")
    assert denied.status_code == 200 and "denied" in denied.content.decode()
    answer = poll(client, started["device_code"])
    assert (answer.status_code, answer.json()["error"]) == (400, "access_denied")
    rewind_last_poll(started["device_code"])
    assert poll(client, started["device_code"]).json()["error"] == "expired_token"
    assert not SignInToken.objects.exists()


def test_the_device_page_wants_a_signed_in_person(client):
    started = start(client)
    page = client.get("/device?user_code=" + started["user_code"])
    assert page.status_code == 302
    assert page["Location"].startswith("/login/?next=/device")
    refused = client.post("/device", {"user_code": started["user_code"], "action": "approve"})
    assert refused.status_code == 302
    assert DeviceAuthorization.objects.get().status == "pending"


@pytest.mark.parametrize(
    "how",
    ["no csrf token", "another origin", "cross-site fetch"],
)
def test_cross_site_posts_to_the_device_page_are_refused(client, alice, how):
    started = start(client)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    page = browser.get("/device?user_code=" + started["user_code"])
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content).group(1)
    form = {"user_code": started["user_code"], "action": "approve"}
    headers = {}
    if how != "no csrf token":
        form["csrfmiddlewaretoken"] = token.decode()
    if how == "another origin":
        headers["Origin"] = "https://evil.example"
    if how == "cross-site fetch":
        headers["Origin"] = HOST
        headers["Sec-Fetch-Site"] = "cross-site"
    refused = browser.post("/device", form, headers=headers)
    assert refused.status_code == 403
    assert DeviceAuthorization.objects.get().status == "pending"
    # The same post from the page itself goes through.
    form["csrfmiddlewaretoken"] = token.decode()
    ok = browser.post("/device", form, headers={"Origin": HOST, "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200
    assert DeviceAuthorization.objects.get().status == "approved"


def test_guessing_user_codes_is_cut_off(client, browser, settings):
    settings.LLMPROXY_DEVICE_CODE_ATTEMPTS = 5
    started = start(client)
    for guess in range(5):
        wrong = approve(browser, f"BBBB-BBB{'BCDFG'[guess]}")
        assert wrong.status_code == 400
    assert approve(browser, "not a code").status_code == 429
    # Locked out, even the right code is refused now: the guesser cannot tell a hit.
    assert approve(browser, started["user_code"]).status_code == 429
    assert DeviceAuthorization.objects.get().status == "pending"


def redeem(client, browser) -> dict:
    started = start(client)
    approve(browser, started["user_code"])
    return poll(client, started["device_code"]).json()


def refresh(client, refresh_token: str):
    return client.post(
        "/oauth/token", f"grant_type=refresh_token&refresh_token={refresh_token}", content_type=FORM
    )


def test_refresh_rotates_and_a_replay_ends_the_sign_in(client, browser):
    first = redeem(client, browser)
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    replay = refresh(client, first["refresh_token"])
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_grant")
    assert refresh(client, second["refresh_token"]).status_code == 401  # the family ended
    assert not SignInToken.objects.filter(revoked_at__isnull=True).exists()


def test_token_endpoint_bad_input_gets_oauth_errors(client):
    assert client.get("/oauth/token").status_code == 405
    missing = client.post("/oauth/token", "", content_type=FORM)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    other = client.post("/oauth/token", "grant_type=password", content_type=FORM)
    assert other.json()["error"] == "unsupported_grant_type"
    unknown = poll(client, "x" * 43)
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_grant")
    huge = poll(client, "x" * 5000)
    assert huge.status_code == 400
    garbage = refresh(client, "llmpr-not-a-token")
    assert (garbage.status_code, garbage.json()["error"]) == (401, "invalid_grant")


def test_revocation_per_rfc_7009(client, browser):
    tokens = redeem(client, browser)
    revoke = lambda body: client.post("/oauth/revoke", body, content_type=FORM)  # noqa: E731
    assert revoke(f"token={tokens['access_token']}").status_code == 200
    assert SignInToken.objects.get(kind="access").revoked_at is not None
    assert revoke("token=llmpa-unknown").status_code == 200  # unknown: not an error
    assert revoke("").status_code == 400
    hint = f"token={tokens['refresh_token']}&token_type_hint=refresh_token"
    assert revoke(hint).status_code == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 401


def test_userinfo_names_the_person_of_a_live_access_token(client, browser, alice):
    tokens = redeem(client, browser)
    me = client.get(
        "/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.status_code == 200 and me.json()["preferred_username"] == "alice"
    assert client.get("/oauth/userinfo").status_code == 401
    refresh_as_bearer = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.get("/oauth/userinfo", headers=refresh_as_bearer).status_code == 401


@pytest.mark.e2e
def test_a_disabled_person_is_refused_a_refresh_and_their_access_stops_within_a_second(
    gateway, fake, provider, alice
):
    from tests.fakes import fake_provider as fu

    fake.set_default(fu.text("ok"))
    http = httpx.Client(base_url=gateway.url)
    started = http.post("/oauth/device_authorization", data={"surface": "claude_code"}).json()
    browser = Client()
    browser.force_login(alice)
    approve(browser, started["user_code"])
    tokens = http.post(
        "/oauth/token", data={"grant_type": GRANT, "device_code": started["device_code"]}
    ).json()
    message = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    bearer = {"authorization": f"Bearer {tokens['access_token']}"}
    assert http.post("/v1/messages", json=message, headers=bearer).status_code == 200

    alice.is_active = False
    alice.save()
    disabled_at = time.monotonic()
    while http.post("/v1/messages", json=message, headers=bearer).status_code == 200:
        assert time.monotonic() - disabled_at < 1.0, "the access token still works"
        time.sleep(0.05)
    refused = http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_grant")
    assert not SignInToken.objects.filter(person=alice, revoked_at__isnull=True).exists()


@pytest.mark.e2e
def test_over_budget_a_claude_code_sign_in_gets_the_spend_cap_answer(gateway, provider, alice):
    """Claude Code 2.1.332 signed in to a gateway shows a 402 as "API Error: 402 …" and a
    plain 429 as "not your usage limit"; this 429 it shows as the message alone, once."""
    from accounts import services, signin

    Person.objects.create(user=alice, budget_usd=0)
    message = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    claude = signin.issue(person=alice, client="claude_code").access_token
    refused = httpx.post(
        gateway.url + "/v1/messages", json=message, headers={"authorization": f"Bearer {claude}"}
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "billing_error"
    assert "budget" in refused.json()["error"]["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert refused.headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert refused.headers["anthropic-ratelimit-unified-overage-disabled-reason"]
    assert int(refused.headers["retry-after"]) > 0
    # Keys and other sign-ins keep the 402 the SDKs know.
    cli = signin.issue(person=alice, client="cli").access_token
    other = httpx.post(
        gateway.url + "/v1/messages", json=message, headers={"authorization": f"Bearer {cli}"}
    )
    assert other.status_code == 402
    _, key = services.create_key(name="k", owner=alice)
    assert (
        httpx.post(
            gateway.url + "/v1/messages", json=message, headers={"x-api-key": key}
        ).status_code
        == 402
    )


def test_a_poll_that_waits_for_the_approvals_lock_gets_the_tokens(
    postgres, transactional_db, alice
):
    """PostgreSQL rechecks only the locked row after waiting: the approver must be read from
    it, not from a join made before the approval committed."""
    import threading

    from django.db import connections, transaction

    started = device.start(client="claude_code")
    row = DeviceAuthorization.objects.get()
    locked, answer = threading.Event(), {}

    def approve_slowly() -> None:
        with transaction.atomic():
            DeviceAuthorization.objects.select_for_update().get(pk=row.pk)
            locked.set()
            time.sleep(0.5)  # the poll is waiting for this lock now
            DeviceAuthorization.objects.filter(pk=row.pk).update(status="approved", person=alice)
        connections.close_all()

    approver = threading.Thread(target=approve_slowly)
    approver.start()
    assert locked.wait(5)
    try:
        answer["issued"] = device.poll(device_code=started.device_code)
    finally:
        approver.join()
    assert answer["issued"].access_token.startswith("llmpa-")
