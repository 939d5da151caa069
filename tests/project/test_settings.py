"""Settings come from the environment, strictly: a bad value names its variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from llmproxy import env

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({'db': settings.DATABASES['default']['ENGINE'], "
    "'db_name': str(settings.DATABASES['default']['NAME']), "
    "'cache': settings.CACHES['default']['BACKEND'], "
    "'eager': settings.CELERY_TASK_ALWAYS_EAGER, 'broker': settings.CELERY_BROKER_URL, "
    "'debug': settings.DEBUG, 'hosts': settings.ALLOWED_HOSTS}))"
)


def load_settings(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """Import the real settings in a fresh interpreter with only the given variables."""
    environment = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "llmproxy.settings",
        "LLMPROXY_DATA_DIR": str(tmp_path),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_environment_in_debug_gives_the_embedded_mode(tmp_path):
    result = load_settings(tmp_path, DJANGO_DEBUG="true")
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.sqlite3"
    assert loaded["db_name"].startswith(str(tmp_path))
    assert loaded["cache"].endswith("LocMemCache")
    assert loaded["eager"] is True
    # the dev secret is generated into an untracked file, readable only by its owner
    secret_file = tmp_path / "dev-secret-key"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert len(secret_file.read_text()) >= 50


def test_scaled_mode_from_database_and_redis_urls(tmp_path):
    result = load_settings(
        tmp_path,
        DJANGO_SECRET_KEY="k" * 50,
        DATABASE_URL="postgresql://u:p%40ss@db.example:5433/gw?sslmode=require",
        REDIS_URL="redis://cache.example:6380/2",
        DJANGO_ALLOWED_HOSTS="gw.example, 10.0.0.5",
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.postgresql"
    assert loaded["cache"] == "django_redis.cache.RedisCache"
    assert loaded["eager"] is False
    assert loaded["broker"] == "redis://cache.example:6380/2"
    assert loaded["debug"] is False
    assert loaded["hosts"] == ["gw.example", "10.0.0.5"]


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DJANGO_DEBUG": "yes please"}, "DJANGO_DEBUG"),
        ({}, "DJANGO_SECRET_KEY"),  # production mode refuses to start without a key
        ({"DJANGO_DEBUG": "true", "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DJANGO_DEBUG": "true", "DATABASE_URL": "postgres://host:port/db"}, "DATABASE_URL"),
        ({"DJANGO_DEBUG": "true", "REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
        ({"DJANGO_DEBUG": "true", "DJANGO_ALLOWED_HOSTS": "a,,b"}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "true", "LLMPROXY_READ_TIMEOUT": "soon"}, "LLMPROXY_READ_TIMEOUT"),
        # at least one whole body must fit in flight
        (
            {"DJANGO_DEBUG": "true", "LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT": "1048576"},
            "LLMPROXY_MAX_BODY_BYTES_IN_FLIGHT",
        ),
        (
            {"DJANGO_DEBUG": "true", "LLMPROXY_BODY_TIMEOUT_SECONDS": "0"},
            "LLMPROXY_BODY_TIMEOUT_SECONDS",
        ),
        ({"DJANGO_DEBUG": "true", "LLMPROXY_MAX_HEADERS": "many"}, "LLMPROXY_MAX_HEADERS"),
    ],
)
def test_malformed_values_stop_startup_naming_the_variable(tmp_path, variables, named):
    result = load_settings(tmp_path, **variables)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr


def test_manage_py_reports_configuration_errors_in_one_line(tmp_path):
    environment = {"PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": str(tmp_path)}
    environment["DJANGO_DEBUG"] = "maybe"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "configuration error: DJANGO_DEBUG: expected true or false, got 'maybe'"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("FALSE", False), ("1", True), ("off", False)]
)
def test_env_bool_accepts_only_booleans(raw, expected):
    assert env.env_bool({"X": raw}, "X", default=not expected) is expected
    assert env.env_bool({}, "X", default=True) is True
    with pytest.raises(ImproperlyConfigured, match="X: expected true or false"):
        env.env_bool({"X": "tru"}, "X", default=False)


def test_env_int_and_float_reject_garbage_and_out_of_range():
    assert env.env_int({"N": "5"}, "N", 1) == 5
    with pytest.raises(ImproperlyConfigured, match="N: expected an integer"):
        env.env_int({"N": "5.5"}, "N", 1)
    with pytest.raises(ImproperlyConfigured, match="N: must be at least 1"):
        env.env_int({"N": "0"}, "N", 1, minimum=1)
    with pytest.raises(ImproperlyConfigured, match="F: must be at least"):
        env.env_float({"F": "nan"}, "F", 1.0)


def test_secrets_can_come_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    assert env.env_str({"S_FILE": str(secret)}, "S") == "from-file"
    with pytest.raises(ImproperlyConfigured, match="S: set either"):
        env.env_str({"S": "a", "S_FILE": str(secret)}, "S")
    with pytest.raises(ImproperlyConfigured, match="S_FILE: cannot read"):
        env.env_str({"S_FILE": str(tmp_path / "missing")}, "S")


def test_database_url_parsing():
    parsed = env.parse_database_url(
        "DATABASE_URL", "postgres://me:s%2Fcret@h:6543/app?sslmode=verify-full"
    )
    assert parsed["NAME"] == "app"
    assert parsed["USER"] == "me"
    assert parsed["PASSWORD"] == "s/cret"
    assert parsed["HOST"] == "h"
    assert parsed["PORT"] == "6543"
    assert parsed["OPTIONS"] == {"sslmode": "verify-full"}
    with pytest.raises(ImproperlyConfigured, match="one database"):
        env.parse_database_url("DATABASE_URL", "postgres://h/")


def test_redis_url_checking():
    assert env.check_redis_url("R", "rediss://:pw@h:6379/0") == "rediss://:pw@h:6379/0"
    with pytest.raises(ImproperlyConfigured, match="R: the database must be a number"):
        env.check_redis_url("R", "redis://h:6379/cache")
    with pytest.raises(ImproperlyConfigured, match="R: the URL has no host"):
        env.check_redis_url("R", "redis://")
