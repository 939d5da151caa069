"""A fake Google Vertex AI for Claude, and the fake OAuth token endpoint its service
accounts' ``token_uri`` points at, on loopback.

``/token`` takes a JWT-bearer grant (RFC 7523): the assertion's RS256 signature is checked
against the public key of the account that signed it (a throwaway RSA key made by
``service_account``), and its issuer, audience, scope and times; it answers with an access
token this fake remembers, with its expiry. The publisher paths
(``/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{m}:rawPredict``,
``:streamRawPredict``, ``count-tokens:rawPredict``) accept only a bearer token the fake
issued and that has not expired, for the fake's project and region, and answer as the fake
Anthropic provider does (its queue and helpers).
"""

from __future__ import annotations

import base64
import time
import uuid

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.fake_provider import FakeProvider, Reply, count_tokens, text

PROJECT = "fake-project-123"
REGION = "us-east5"
MODEL_ID = "claude-test-4-5@20250929"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def service_account(token_uri: str, project: str = PROJECT) -> tuple[str, rsa.RSAPublicKey]:
    """A service account's JSON key with a fresh RSA key, and that key's public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": f"llmproxy@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return orjson.dumps(info).decode(), key.public_key()


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _google_error(status: int, state: str, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": state}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class FakeVertex(FakeProvider):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.project = PROJECT
        self.region = REGION
        self.accounts: dict[str, rsa.RSAPublicKey] = {}  # client_email → public key
        self.issued: dict[str, float] = {}  # access token → expiry
        self.token_lifetime = 3600
        self.token_requests = 0
        self.refused_tokens: list[str] = []  # why each refused grant or call was refused

    def clear(self) -> None:
        super().clear()
        self.project, self.region = PROJECT, REGION
        self.accounts.clear()
        self.issued.clear()
        self.token_lifetime = 3600
        self.token_requests = 0
        self.refused_tokens.clear()

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def new_account(self, project: str = PROJECT) -> str:
        """A service account this fake's token endpoint knows: its JSON key."""
        key_json, public = service_account(self.token_uri, project)
        self.accounts[orjson.loads(key_json)["client_email"]] = public
        return key_json

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/token", self._token)
        app.router.add_post(
            "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{tail}",
            self._predict,
        )
        return app

    # --- the token endpoint -------------------------------------------------------------

    def _check_assertion(self, assertion: str) -> str | None:
        """Why the assertion is refused, or None."""
        try:
            header_part, payload_part, signature_part = assertion.split(".")
            header, claims = orjson.loads(_b64(header_part)), orjson.loads(_b64(payload_part))
        except (ValueError, orjson.JSONDecodeError):
            return "malformed JWT"
        if header.get("alg") != "RS256":
            return "alg must be RS256"
        public = self.accounts.get(claims.get("iss"))
        if public is None:
            return "unknown issuer"
        try:
            public.verify(
                _b64(signature_part), f"{header_part}.{payload_part}".encode(),
                padding.PKCS1v15(), hashes.SHA256(),
            )  # fmt: skip
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("aud") != self.token_uri:
            return "Invalid JWT: audience"
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: scope"
        if not (claims.get("iat", 0) <= now + 60 and now < claims.get("exp", 0) <= now + 3700):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        return None

    async def _token(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        refused = self._check_assertion(str(form.get("assertion", "")))
        if refused is not None:
            self.refused_tokens.append(refused)
            return web.json_response(
                {"error": "invalid_grant", "error_description": refused}, status=400
            )
        token = "ya29.fake-" + uuid.uuid4().hex
        self.issued[token] = time.time() + self.token_lifetime
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    # --- the publisher model --------------------------------------------------------------

    def _check_token(self, request: web.Request) -> web.Response | None:
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        expires = self.issued.get(token)
        if not authorization.startswith("Bearer ") or expires is None or expires <= time.time():
            self.refused_tokens.append("expired" if expires else "not issued here")
            return _google_error(
                401, "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )  # fmt: skip
        return None

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        refused = self._check_token(request)
        if refused is not None:
            return refused
        project, region = request.match_info["project"], request.match_info["region"]
        if project != self.project:
            return _google_error(
                403, "PERMISSION_DENIED", f"Permission denied on resource project {project}."
            )
        if region != self.region:
            return _google_error(404, "NOT_FOUND", f"Publisher model in {region} not found.")
        model, _, action = request.match_info["tail"].partition(":")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("anthropic_version") != "vertex-2023-10-16":
            return _anthropic_error(400, "anthropic_version: vertex-2023-10-16 is required")
        if model == "count-tokens" and action == "rawPredict":
            if "model" not in data:
                return _anthropic_error(400, "model: Field required")
            reply = self.next_reply(count_tokens())
            return await self._answer(
                request, reply if isinstance(reply, Reply) else count_tokens(), data, stream=False
            )
        if model != MODEL_ID:
            return _google_error(404, "NOT_FOUND", f"Publisher Model `{model}` not found.")
        if "model" in data:
            return _anthropic_error(400, "model: Extra inputs are not permitted")
        stream = action == "streamRawPredict"
        if action not in ("rawPredict", "streamRawPredict") or stream != (
            data.get("stream") is True
        ):
            return _anthropic_error(400, f"{action} does not match stream={data.get('stream')}")
        reply = self.next_reply(text())
        if not isinstance(reply, Reply):
            reply = text()
        return await self._answer(request, reply, {**data, "model": model}, stream=stream)


def _anthropic_error(status: int, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
