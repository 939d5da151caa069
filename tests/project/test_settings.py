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
        (
            {"DJANGO_DEBUG": "true", "LLMPROXY_COMPACTION_CONCURRENCY": "0"},
            "LLMPROXY_COMPACTION_CONCURRENCY",
        ),
        (
            {"DJANGO_DEBUG": "true", "LLMPROXY_COMPACTION_MAX_CALLS": "lots"},
            "LLMPROXY_COMPACTION_MAX_CALLS",
        ),
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


def test_database_url_may_name_a_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = env.parse_database_url("DATABASE_URL", "sqlite:///data/gw.sqlite3")
    assert relative["ENGINE"] == "django.db.backends.sqlite3"
    assert relative["NAME"] == tmp_path / "data" / "gw.sqlite3"  # from the working directory
    # the same options as the default SQLite file: WAL, and a wait for a locked database
    assert relative["OPTIONS"] == {
        "init_command": "PRAGMA journal_mode=WAL;",
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
    }
    absolute = env.parse_database_url("DATABASE_URL", "sqlite:////srv/llmproxy/db.sqlite3")
    assert absolute["NAME"] == Path("/srv/llmproxy/db.sqlite3")
    for url in ("sqlite://:memory:", "sqlite://"):
        memory = env.parse_database_url("DATABASE_URL", url)
        assert memory["NAME"] == ":memory:" and "init_command" not in memory["OPTIONS"]
    assert env.parse_database_url("DATABASE_URL", "postgresql://h/db")["NAME"] == "db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/db.sqlite3",
        "sqlite:///",
        "sqlite:///dir/",
        "sqlite:///db.sqlite3?timeout=5",
        "sqlite:db.sqlite3",
        "mysql://h/db",
        "db.sqlite3",
    ],
)
def test_a_malformed_or_unknown_database_url_names_the_variable(url):
    with pytest.raises(ImproperlyConfigured, match=r"^DATABASE_URL: "):
        env.parse_database_url("DATABASE_URL", url)


def test_settings_use_a_sqlite_database_url(tmp_path):
    target = tmp_path / "elsewhere" / "gw.sqlite3"
    result = load_settings(tmp_path, DJANGO_DEBUG="true", DATABASE_URL=f"sqlite:///{target}")
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.sqlite3"
    assert loaded["db_name"] == str(target)


# --- the local env file ---------------------------------------------------------------------


def test_the_local_env_file_fills_in_what_the_environment_does_not_set(tmp_path):
    (tmp_path / "local.env").write_text(
        "# written by make run\n\nDJANGO_DEBUG=true\n  DJANGO_LOG_LEVEL = WARNING  \n"
        "DJANGO_ALLOWED_HOSTS=from-file\nDJANGO_SECRET_KEY=from-file\n"
    )
    environment = {"LLMPROXY_DATA_DIR": str(tmp_path), "DJANGO_ALLOWED_HOSTS": "from-env"}
    environment["DJANGO_SECRET_KEY_FILE"] = str(tmp_path / "secret")
    merged = env.with_env_file(environment, ROOT)
    assert merged["DJANGO_DEBUG"] == "true"
    assert merged["DJANGO_LOG_LEVEL"] == "WARNING"
    assert merged["DJANGO_ALLOWED_HOSTS"] == "from-env"  # the environment wins
    assert "DJANGO_SECRET_KEY" not in merged  # so does a secret's NAME_FILE
    # the default place is local.env in the data directory, read only if it exists
    assert env.with_env_file({"LLMPROXY_DATA_DIR": str(tmp_path / "none")}, ROOT) == {
        "LLMPROXY_DATA_DIR": str(tmp_path / "none")
    }


def test_llmproxy_env_file_points_elsewhere_or_disables_the_file(tmp_path):
    (tmp_path / "local.env").write_text("DJANGO_DEBUG=true\n")
    other = tmp_path / "other.env"
    other.write_text("DJANGO_LOG_LEVEL=ERROR\n")
    data = {"LLMPROXY_DATA_DIR": str(tmp_path)}
    merged = env.with_env_file({**data, "LLMPROXY_ENV_FILE": str(other)}, ROOT)
    assert merged["DJANGO_LOG_LEVEL"] == "ERROR" and "DJANGO_DEBUG" not in merged
    assert "DJANGO_DEBUG" not in env.with_env_file({**data, "LLMPROXY_ENV_FILE": ""}, ROOT)
    with pytest.raises(ImproperlyConfigured, match="LLMPROXY_ENV_FILE: cannot read"):
        env.with_env_file({"LLMPROXY_ENV_FILE": str(tmp_path / "missing.env")}, ROOT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DJANGO_DEBUG=true\nexport X=1\n", "line 2: expected NAME=value"),
        ("# note\nDJANGO_SECRET_KEY hunter2\n", "line 2: expected NAME=value"),
        ("=value\n", "line 1: expected NAME=value"),
        ("A=1\nA=2\n", "line 2: A is already set on line 1"),
        ("LLMPROXY_DATA_DIR=/tmp\n", "line 1: LLMPROXY_DATA_DIR must be set in the environment"),
    ],
)
def test_a_malformed_env_file_line_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "local.env"
    path.write_text(text)
    with pytest.raises(ImproperlyConfigured) as raised:
        env.with_env_file({"LLMPROXY_DATA_DIR": str(tmp_path)}, ROOT)
    assert str(raised.value) == f"env file {path}, {message}"
    assert "hunter2" not in str(raised.value)  # a bad line is not echoed: it may hold a secret


def test_settings_read_the_local_env_file_and_the_environment_wins(tmp_path):
    (tmp_path / "local.env").write_text("DJANGO_DEBUG=true\nDJANGO_ALLOWED_HOSTS=a.example\n")
    loaded = load_settings(tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["debug"] is True
    assert json.loads(loaded.stdout)["hosts"] == ["a.example"]
    refused = load_settings(tmp_path, DJANGO_DEBUG="false")
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY: required" in refused.stderr
    disabled = load_settings(tmp_path, LLMPROXY_ENV_FILE="")
    assert disabled.returncode != 0 and "DJANGO_SECRET_KEY: required" in disabled.stderr


def test_manage_py_reports_a_malformed_env_file_in_one_line(tmp_path):
    (tmp_path / "local.env").write_text("DJANGO_DEBUG=true\nnot a setting\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"configuration error: env file {tmp_path / 'local.env'}, line 2: expected NAME=value"
    ]


def test_localenv_writes_the_file_once_and_never_rewrites_it(tmp_path):
    def localenv(*args: str, **variables: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "llmproxy.localenv", *args],
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": str(tmp_path), **variables},
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = localenv("DJANGO_DEBUG=true")
    path = tmp_path / "local.env"
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"Local settings: wrote {path} (DJANGO_DEBUG=true)\n"
    assert env.read_env_file(path) == {"DJANGO_DEBUG": "true"}
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("DJANGO_DEBUG=true\nDJANGO_LOG_LEVEL=WARNING\n")  # the developer's edit
    second = localenv("DJANGO_DEBUG=false")
    assert second.returncode == 0 and second.stdout == ""
    assert env.read_env_file(path) == {"DJANGO_DEBUG": "true", "DJANGO_LOG_LEVEL": "WARNING"}
    assert localenv("DJANGO_DEBUG=true", LLMPROXY_ENV_FILE="").returncode == 0
    elsewhere = tmp_path / "sub" / "dev.env"
    assert localenv("DJANGO_DEBUG=true", LLMPROXY_ENV_FILE=str(elsewhere)).returncode == 0
    assert env.read_env_file(elsewhere) == {"DJANGO_DEBUG": "true"}


@pytest.mark.parametrize(
    "variables", [{"DJANGO_DEBUG": "true"}, {"DJANGO_SECRET_KEY": "k" * 50}], ids=["debug", "prod"]
)
def test_a_warning_is_logged_once(tmp_path, variables):
    """A django.request warning (a 404) reaches one handler, not Django's and the root's."""
    result = subprocess.run(
        [
            sys.executable, "manage.py", "shell", "-c",
            "from django.test import Client; "
            "print(Client().get('/no-such-page', HTTP_HOST='localhost').status_code)",
        ],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "LLMPROXY_DATA_DIR": str(tmp_path), **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "404"
    logged = [line for line in result.stderr.splitlines() if "Not Found: /no-such-page" in line]
    assert len(logged) == 1, result.stderr
    assert " WARNING django.request Not Found: /no-such-page" in logged[0]
