"""Settings for llmproxy, read from the environment.

No environment at all gives the embedded mode: SQLite, local-memory cache and Celery in eager
mode. DATABASE_URL and REDIS_URL switch to the scaled mode. Every
variable is listed in README.md; app code reads ``django.conf.settings``, never ``os.environ``.

Variables the environment does not set may come from the local env file (``local.env`` in the
data directory, which ``make run`` writes, or the file LLMPROXY_ENV_FILE names).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from llmproxy.env import (
    check_redis_url,
    data_dir,
    dev_secret_key,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_pairs,
    env_str,
    env_url,
    parse_database_url,
    sqlite_database,
    with_env_file,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = data_dir(os.environ, BASE_DIR)
# The environment wins over the local env file.
ENV = with_env_file(os.environ, BASE_DIR)

DEBUG = env_bool(ENV, "DJANGO_DEBUG", False)

SECRET_KEY = env_str(ENV, "DJANGO_SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY: required when DJANGO_DEBUG is false (production mode)"
        )
    SECRET_KEY = dev_secret_key(DATA_DIR / "dev-secret-key")

ALLOWED_HOSTS = env_list(ENV, "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list(ENV, "DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "billing",
    "llmproxy.gateway",
    "llmproxy.console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Changes made in the admin and the API are audited as their user's (accounts.audit).
    "accounts.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmproxy.urls"
ASGI_APPLICATION = "llmproxy.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "llmproxy.console.signin_pages.sso_context",
            ],
        },
    },
]

# --- Database: SQLite file by default, PostgreSQL (or another SQLite) with DATABASE_URL -----
DATABASE_URL = env_str(ENV, "DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": parse_database_url("DATABASE_URL", DATABASE_URL)}
else:
    DATABASES = {"default": sqlite_database(DATA_DIR / "llmproxy.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: limit and budget counters, policy generation, Celery broker, Django's cache ---
REDIS_URL = env_str(ENV, "REDIS_URL")
if REDIS_URL:
    check_redis_url("REDIS_URL", REDIS_URL)
    # Shared by every worker: what must hold across processes (throttled bookkeeping of API
    # token use) stays consistent. Without Redis, Django's default local-memory cache.
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "llmproxy",
        }
    }

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str(ENV, "CELERY_BROKER_URL", REDIS_URL or "memory://localhost/")
if not CELERY_BROKER_URL.startswith("memory://"):
    check_redis_url("CELERY_BROKER_URL", CELERY_BROKER_URL)
CELERY_TASK_ALWAYS_EAGER = env_bool(ENV, "LLMPROXY_CELERY_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# celery -A llmproxy beat: budget alerts every minute, counters against the ledger every 5,
# raw usage past LLMPROXY_USAGE_RETENTION_DAYS pruned hourly (a no-op when unset).
CELERY_BEAT_SCHEDULE = {
    "budget-alerts": {"task": "billing.tasks.check_budget_alerts", "schedule": 60.0},
    "reconcile-counters": {"task": "llmproxy.gateway.tasks.reconcile_counters", "schedule": 300.0},
    "prune-usage": {"task": "billing.tasks.prune_usage", "schedule": 3600.0},
}
# A task taken by a worker that dies unacknowledged goes back to the queue after this long;
# workers look for such tasks every few seconds (kombu's default scans only every ~100 s).
_VISIBILITY = env_int(ENV, "LLMPROXY_CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY,
    "unacked_restore_interval": min(10, _VISIBILITY),
    "unacked_restore_throttle": 1,
}

# --- Auth and i18n --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# The sign-in page of the self-service pages (and the device page); staff also use /admin/.
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/me/"
LOGOUT_REDIRECT_URL = "/login/"

# --- Single sign-on (OpenID Connect, docs/people.md): off unless an issuer is set ----------
# The issuer's /.well-known/openid-configuration gives the endpoints (read on first use).
LLMPROXY_OIDC_ISSUER = env_url(ENV, "LLMPROXY_OIDC_ISSUER")
OIDC_RP_CLIENT_ID = env_str(ENV, "LLMPROXY_OIDC_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_str(ENV, "LLMPROXY_OIDC_CLIENT_SECRET")
if LLMPROXY_OIDC_ISSUER and not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
    raise ImproperlyConfigured(
        "LLMPROXY_OIDC_ISSUER is set: LLMPROXY_OIDC_CLIENT_ID and LLMPROXY_OIDC_CLIENT_SECRET "
        "(or _FILE) are required too"
    )
# Email domains that may sign in (empty: any); the claim with the person's IdP groups.
LLMPROXY_OIDC_ALLOWED_DOMAINS = [
    domain.lower().lstrip("@") for domain in env_list(ENV, "LLMPROXY_OIDC_ALLOWED_DOMAINS", [])
]
LLMPROXY_OIDC_GROUPS_CLAIM = env_str(ENV, "LLMPROXY_OIDC_GROUPS_CLAIM", "groups")
# IdP group → team (group=Team name, comma-separated), the groups whose people are staff
# and those whose people are superusers; the admin's IdP group mappings add to these.
LLMPROXY_OIDC_GROUP_TEAMS = env_pairs(ENV, "LLMPROXY_OIDC_GROUP_TEAMS")
LLMPROXY_OIDC_STAFF_GROUPS = env_list(ENV, "LLMPROXY_OIDC_STAFF_GROUPS", [])
LLMPROXY_OIDC_SUPERUSER_GROUPS = env_list(ENV, "LLMPROXY_OIDC_SUPERUSER_GROUPS", [])
# offline_access: the IdP's refresh token lets a sign-in token refresh ask the IdP whether
# the person may still sign in.
OIDC_RP_SCOPES = env_str(ENV, "LLMPROXY_OIDC_SCOPES", "openid email profile offline_access")
if LLMPROXY_OIDC_ISSUER and "openid" not in OIDC_RP_SCOPES.split():
    raise ImproperlyConfigured("LLMPROXY_OIDC_SCOPES: must include openid")
OIDC_RP_SIGN_ALGO = env_str(ENV, "LLMPROXY_OIDC_SIGN_ALGO", "RS256")
if OIDC_RP_SIGN_ALGO[:2] not in {"RS", "ES", "PS"}:
    raise ImproperlyConfigured(
        f"LLMPROXY_OIDC_SIGN_ALGO: expected an asymmetric algorithm such as RS256, got "
        f"{OIDC_RP_SIGN_ALGO!r}"
    )
# How long a web session started by single sign-on lasts.
LLMPROXY_OIDC_SESSION_SECONDS = env_int(ENV, "LLMPROXY_OIDC_SESSION_SECONDS", 8 * 3600, minimum=60)
OIDC_USE_PKCE = True
OIDC_TOKEN_USE_BASIC_AUTH = env_bool(ENV, "LLMPROXY_OIDC_TOKEN_BASIC_AUTH", True)
OIDC_TIMEOUT = env_float(ENV, "LLMPROXY_OIDC_TIMEOUT_SECONDS", 10.0, minimum=0.1)
OIDC_REDIRECT_ALLOWED_HOSTS: list[str] = []
LOGIN_REDIRECT_URL_FAILURE = "/login/"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    # Answers only an IdP's callback, and only when LLMPROXY_OIDC_ISSUER is set.
    "accounts.sso.OidcBackend",
]

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

SESSION_COOKIE_SECURE = env_bool(ENV, "DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "llmproxy.console.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_CLASSES": [],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmproxy management API",
    "DESCRIPTION": "Keys, teams, providers, prices, usage and spend of an llmproxy gateway.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from the vendored sidecar package: the gateway works with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- The gateway ----------------------------------------------------------------------------
# HMAC key for API key digests; changing it invalidates every issued key.
LLMPROXY_KEY_HMAC_SECRET = env_str(ENV, "LLMPROXY_KEY_HMAC_SECRET", SECRET_KEY)
# Fernet keys for provider credentials at rest; the first encrypts, all decrypt (rotation).
LLMPROXY_ENCRYPTION_KEYS = env_list(ENV, "LLMPROXY_ENCRYPTION_KEYS", [SECRET_KEY])
LLMPROXY_MAX_BODY_BYTES = env_int(ENV, "LLMPROXY_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024)
# Limits at the edge (docs/operations.md): what a client can make a worker hold before its
# key is checked, and how long it may take to send a request.
LLMPROXY_MAX_HEADER_BYTES = env_int(ENV, "LLMPROXY_MAX_HEADER_BYTES", 64 * 1024, minimum=4096)
LLMPROXY_MAX_HEADERS = env_int(ENV, "LLMPROXY_MAX_HEADERS", 100, minimum=16)
LLMPROXY_HEADER_TIMEOUT_SECONDS = env_float(
    ENV, "LLMPROXY_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1
)
LLMPROXY_BODY_TIMEOUT_SECONDS = env_float(ENV, "LLMPROXY_BODY_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# Body bytes being received by one worker at once; at least one whole body must fit.
LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT = env_int(
    ENV,
    "LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT",
    max(256 * 1024 * 1024, LLMPROXY_MAX_BODY_BYTES),
    minimum=LLMPROXY_MAX_BODY_BYTES,
)
# The client headers forwarded to a provider: each value, and all of them together.
LLMPROXY_MAX_FORWARDED_HEADER_BYTES = env_int(
    ENV, "LLMPROXY_MAX_FORWARDED_HEADER_BYTES", 8 * 1024, minimum=256
)
LLMPROXY_MAX_FORWARDED_HEADERS_TOTAL_BYTES = env_int(
    ENV, "LLMPROXY_MAX_FORWARDED_HEADERS_TOTAL_BYTES", 32 * 1024, minimum=1024
)
# One websocket message from a client (Codex's response.create frames).
LLMPROXY_MAX_FRAME_BYTES = env_int(ENV, "LLMPROXY_MAX_FRAME_BYTES", 16 * 1024 * 1024, minimum=1024)
# Deploys (docs/operations.md): after a SIGTERM, how long open streams and websocket turns
# may take to finish, and how long the listener stays open first (readiness failing).
LLMPROXY_DRAIN_GRACE_SECONDS = env_float(ENV, "LLMPROXY_DRAIN_GRACE_SECONDS", 30.0, minimum=0.0)
LLMPROXY_DRAIN_DELAY_SECONDS = env_float(ENV, "LLMPROXY_DRAIN_DELAY_SECONDS", 0.0, minimum=0.0)
LLMPROXY_CONNECT_TIMEOUT = env_float(ENV, "LLMPROXY_CONNECT_TIMEOUT", 10.0, minimum=0.1)
LLMPROXY_READ_TIMEOUT = env_float(ENV, "LLMPROXY_READ_TIMEOUT", 600.0, minimum=1.0)
# A streamed answer holds its upstream connection to the end: this caps a worker's calls in
# flight (one past it waits up to LLMPROXY_CONNECT_TIMEOUT for a connection).
LLMPROXY_POOL_SIZE = env_int(ENV, "LLMPROXY_POOL_SIZE", 8192, minimum=1)
LLMPROXY_REDIS_POOL_SIZE = env_int(ENV, "LLMPROXY_REDIS_POOL_SIZE", 64, minimum=1)
# How often a worker checks whether any key, team, provider or price changed.
LLMPROXY_POLICY_REFRESH_SECONDS = env_float(
    ENV, "LLMPROXY_POLICY_REFRESH_SECONDS", 0.5, minimum=0.0
)
# Budget reservations: output tokens assumed when a request sets no maximum and its price
# row names none, and the output a key in "expected" reservation mode reserves.
LLMPROXY_DEFAULT_MAX_OUTPUT_TOKENS = env_int(
    ENV, "LLMPROXY_DEFAULT_MAX_OUTPUT_TOKENS", 64_000, minimum=1
)
LLMPROXY_EXPECTED_OUTPUT_TOKENS = env_int(ENV, "LLMPROXY_EXPECTED_OUTPUT_TOKENS", 4096, minimum=1)
# Calls reserved per hosted tool (web search, ...) when the request sets no max_uses.
LLMPROXY_RESERVED_TOOL_CALLS = env_int(ENV, "LLMPROXY_RESERVED_TOOL_CALLS", 10, minimum=0)
# Codex's Responses websocket mode; false answers the upgrade with 426 (Codex uses HTTP).
LLMPROXY_WEBSOCKETS = env_bool(ENV, "LLMPROXY_WEBSOCKETS", True)
# Prompt tokens reserved for each thing a request makes the provider read that its body does
# not carry (a previous response the gateway has no figure for, a stored conversation or
# prompt, a file or URL).
LLMPROXY_HELD_CONTEXT_TOKENS = env_int(ENV, "LLMPROXY_HELD_CONTEXT_TOKENS", 100_000, minimum=0)
# Sign-in tokens (Claude Code's /login, llmproxy login): access and refresh token lifetimes.
LLMPROXY_ACCESS_TOKEN_SECONDS = env_int(ENV, "LLMPROXY_ACCESS_TOKEN_SECONDS", 3600, minimum=60)
LLMPROXY_REFRESH_TOKEN_SECONDS = env_int(
    ENV, "LLMPROXY_REFRESH_TOKEN_SECONDS", 30 * 86_400, minimum=300
)
# The device grant behind them: how long a user code may be entered, how often a client may
# poll, and how many wrong user codes a person (or an address) may try per quarter hour.
LLMPROXY_DEVICE_CODE_SECONDS = env_int(ENV, "LLMPROXY_DEVICE_CODE_SECONDS", 600, minimum=60)
LLMPROXY_DEVICE_POLL_SECONDS = env_int(ENV, "LLMPROXY_DEVICE_POLL_SECONDS", 5, minimum=1)
LLMPROXY_DEVICE_CODE_ATTEMPTS = env_int(ENV, "LLMPROXY_DEVICE_CODE_ATTEMPTS", 10, minimum=1)
# Failover and overload: a provider that failed this many times in a row before its first
# byte is skipped for this long; 429/503/529 answers are retried (with jitter, across the
# route's providers) for at most LLMPROXY_RETRY_SECONDS; a Retry-After longer than
# LLMPROXY_RETRY_AFTER_PASS_ON is passed to the client instead of waited for.
LLMPROXY_BREAKER_FAILURES = env_int(ENV, "LLMPROXY_BREAKER_FAILURES", 5, minimum=1)
LLMPROXY_BREAKER_SECONDS = env_float(ENV, "LLMPROXY_BREAKER_SECONDS", 30.0, minimum=0.0)
LLMPROXY_RETRY_SECONDS = env_float(ENV, "LLMPROXY_RETRY_SECONDS", 8.0, minimum=0.0)
LLMPROXY_RETRY_AFTER_PASS_ON = env_float(ENV, "LLMPROXY_RETRY_AFTER_PASS_ON", 60.0, minimum=0.0)
# A Codex compaction the provider refuses as too large (413) is compacted in chunks
# (gateway/compaction.py): at most this many chunk calls at once, and at most this many
# upstream calls for the whole fan-out.
LLMPROXY_COMPACTION_CONCURRENCY = env_int(ENV, "LLMPROXY_COMPACTION_CONCURRENCY", 4, minimum=1)
LLMPROXY_COMPACTION_MAX_CALLS = env_int(ENV, "LLMPROXY_COMPACTION_MAX_CALLS", 64, minimum=2)
# A client that hangs up before its answer ended: read on this long for the provider's own
# usage figure (sending nothing), then stop and record an estimate.
LLMPROXY_ABANDONED_READ_SECONDS = env_float(
    ENV, "LLMPROXY_ABANDONED_READ_SECONDS", 2.0, minimum=0.0
)
LLMPROXY_USAGE_BATCH_SIZE = env_int(ENV, "LLMPROXY_USAGE_BATCH_SIZE", 100, minimum=1)
# Provider base URLs on loopback, private or link-local addresses (and plain http to them):
# refused unless true, since the provider credential is sent to the base URL.
LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = env_bool(ENV, "LLMPROXY_ALLOW_PRIVATE_UPSTREAMS", False)
# Scaled mode: a batch handed to the broker is checked against the ledger after this long and
# sent again if it is not there (a flushed Redis lost it); a replay inserts nothing twice.
LLMPROXY_USAGE_CONFIRM_SECONDS = env_float(ENV, "LLMPROXY_USAGE_CONFIRM_SECONDS", 60.0, minimum=0.1)
# Usage batches are stored (embedded mode) or published to the broker (scaled mode) by a
# child process of each gateway worker (billing/writer.py), so that Python does not hold the
# event loop's GIL; false: by the worker's own usage thread.
LLMPROXY_USAGE_WRITER_PROCESS = env_bool(ENV, "LLMPROXY_USAGE_WRITER_PROCESS", True)
# At shutdown, how long queued usage may take to be handed over before the rest is spooled.
LLMPROXY_USAGE_SHUTDOWN_SECONDS = env_float(
    ENV, "LLMPROXY_USAGE_SHUTDOWN_SECONDS", 30.0, minimum=0.0
)
# Usage not delivered at shutdown is written here and replayed at the next start (and by
# `manage.py replayusage`).
LLMPROXY_USAGE_SPOOL_DIR = Path(
    env_str(ENV, "LLMPROXY_USAGE_SPOOL_DIR", str(DATA_DIR / "usage-spool"))
)
# Raw usage older than this many days is deleted (the daily rollups keep the totals);
# unset or 0: kept forever.
LLMPROXY_USAGE_RETENTION_DAYS = env_int(ENV, "LLMPROXY_USAGE_RETENTION_DAYS", 0, minimum=0) or None

# Metrics (GET /metrics): with several processes on a host (uvicorn workers, Celery), a
# directory they share, so one scrape reports them all; a bearer token and/or the networks
# allowed to scrape (default: loopback only).
LLMPROXY_METRICS_DIR = env_str(ENV, "LLMPROXY_METRICS_DIR")
if LLMPROXY_METRICS_DIR:
    Path(LLMPROXY_METRICS_DIR).mkdir(parents=True, exist_ok=True)
    # prometheus_client reads its multiprocess directory from the environment, once.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = LLMPROXY_METRICS_DIR
LLMPROXY_METRICS_TOKEN = env_str(ENV, "LLMPROXY_METRICS_TOKEN")
LLMPROXY_METRICS_ALLOW_FROM = env_list(
    ENV, "LLMPROXY_METRICS_ALLOW_FROM", ["127.0.0.0/8", "::1/128"]
)

# Traces (OpenTelemetry, OTLP over HTTP): off unless an endpoint is set, e.g.
# http://otel-collector:4318; headers as name=value pairs, comma-separated.
LLMPROXY_OTLP_ENDPOINT = env_str(ENV, "LLMPROXY_OTLP_ENDPOINT")
LLMPROXY_OTLP_HEADERS = [
    tuple(item.split("=", 1)) for item in env_list(ENV, "LLMPROXY_OTLP_HEADERS", []) if "=" in item
]
LLMPROXY_OTLP_SERVICE_NAME = env_str(ENV, "LLMPROXY_OTLP_SERVICE_NAME", "llmproxy")

LOG_LEVEL = env_str(ENV, "DJANGO_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"DJANGO_LOG_LEVEL: unknown level {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own "django" handlers (a console one in DEBUG, mail_admins) are replaced
        # by none: its records reach the root handler only, so each is printed once.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
