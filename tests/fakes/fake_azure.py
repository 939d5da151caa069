"""A fake Azure OpenAI / Foundry resource, and a fake Entra ID token endpoint, on loopback.

Deployments are names this resource knows (the body's ``model`` for Responses, the path's
deployment for classic Chat); dated paths need a supported ``api-version``; every call needs
the resource's ``api-key`` or a bearer token this fake's Entra endpoint issued for the
Cognitive Services scope. Answers (and OpenAI-shaped errors) are the fake OpenAI provider's.
"""

from __future__ import annotations

import time
import uuid

import orjson
from aiohttp import web

from tests.fakes.fake_openai import OpenAIReply
from tests.fakes.fake_provider import FakeProvider

API_KEY = "azure-fake-resource-key-0123456789abcdef"
DEPLOYMENT = "gpt-test-5-deployment"
API_VERSIONS = {"2025-04-01-preview", "2024-10-21"}
TENANT = "00000000-aaaa-bbbb-cccc-000000000001"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "fake~entra~client~secret"
ENTRA_CREDENTIAL = orjson.dumps(
    {"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
).decode()


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class FakeAzure(FakeProvider):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.deployments = {DEPLOYMENT}
        self.issued: dict[str, float] = {}
        self.token_requests = 0

    def clear(self) -> None:
        super().clear()
        self.deployments = {DEPLOYMENT}
        self.issued.clear()
        self.token_requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(f"/entra/{TENANT}/oauth2/v2.0/token", self._token)
        openai = self.openai
        for prefix, dated in (("/openai/v1", False), ("/openai", True)):
            app.router.add_post(prefix + "/responses", self._checked(openai.responses, dated))
            app.router.add_post(prefix + "/responses/compact", self._checked(openai.compact, dated))
        app.router.add_get("/openai/v1/responses", self._checked(openai.websocket, False))
        app.router.add_post("/openai/v1/chat/completions", self._checked(openai.chat, False))
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._checked(openai.chat, True)
        )
        return app

    def _checked(self, handler, dated: bool):
        async def checked(request: web.Request) -> web.StreamResponse:
            refused = await self._refusal(request, dated)
            if refused is not None:
                await self.record(request)
                return refused
            return await handler(request)

        return checked

    async def _refusal(self, request: web.Request, dated: bool) -> web.Response | None:
        key = request.headers.get("api-key")
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key != API_KEY and self.issued.get(bearer, 0) <= time.time():
            return _error(
                401, "401", "Access denied due to invalid subscription key or wrong API "
                "endpoint. Make sure to provide a valid key for an active subscription and "
                "use a correct regional API endpoint for your resource.",
            )  # fmt: skip
        version = request.query.get("api-version")
        if dated and version is None:
            return _error(404, "404", "Resource not found")
        if version is not None and version not in (API_VERSIONS if dated else {"preview"}):
            return _error(400, "BadRequest", "API version not supported")
        if request.method == "GET":
            return None
        deployment = request.match_info.get("deployment")
        if deployment is None:
            try:
                deployment = orjson.loads(await request.read()).get("model")
            except (orjson.JSONDecodeError, AttributeError):
                deployment = None
        if deployment not in self.deployments:
            return _error(
                404, "DeploymentNotFound", "The API deployment for this resource does not "
                "exist. If you created the deployment within the last 5 minutes, please wait "
                "a moment and try again.",
            )  # fmt: skip
        return None

    async def _token(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.token_requests += 1
        form = await request.post()
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != CLIENT_ID
            or form.get("client_secret") != CLIENT_SECRET
            or form.get("scope") != "https://cognitiveservices.azure.com/.default"
        ):
            return web.json_response(
                {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid "
                 "client secret provided."}, status=401,
            )  # fmt: skip
        token = "eyJ0eXAiOiJKV1Qi.fake-entra-" + uuid.uuid4().hex
        self.issued[token] = time.time() + 3599
        return web.json_response(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        )


__all__ = ["API_KEY", "DEPLOYMENT", "ENTRA_CREDENTIAL", "FakeAzure", "OpenAIReply"]
