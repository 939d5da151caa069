"""Strict parsers for configuration taken from the environment (and the local env file).

Only ``settings.py`` and ``localenv.py`` call these. Each takes the environment mapping
explicitly so tests can feed it good and bad values; a malformed value raises
``ImproperlyConfigured`` naming the variable (or the env file and line) instead of falling
back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """Value of NAME, or the contents of the file named by NAME_FILE (for secrets)."""
    value = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if value is not None and file_name is not None:
        raise ImproperlyConfigured(f"{name}: set either {name} or {name}_FILE, not both")
    if file_name is not None:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_name!r}: {exc}") from exc
    if value is not None:
        value = value.strip()
    return value or None


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = _raw(env, name)
    return default if value is None else value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected true or false, got {value!r}")


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    return number


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a number, got {value!r}") from None
    if not number >= minimum:  # also refuses NaN
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {value!r}")
    return number


def env_list(env: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    value = _raw(env, name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"{name}: empty item in comma-separated list {value!r}")
    return items


def env_pairs(env: Mapping[str, str], name: str) -> list[tuple[str, str]]:
    """``a=b,c=d`` → ``[("a", "b"), ("c", "d")]``; a name may appear more than once."""
    pairs = []
    for item in env_list(env, name, []):
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise ImproperlyConfigured(f"{name}: expected name=value pairs, got {item!r}")
        pairs.append((left.strip(), right.strip()))
    return pairs


def env_url(env: Mapping[str, str], name: str) -> str | None:
    """An http(s) URL with a host and no query or fragment, without its trailing slash."""
    value = _raw(env, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ImproperlyConfigured(f"{name}: expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name}: the URL must have no query or fragment")
    return value.rstrip("/")


def sqlite_database(name: str | Path) -> dict:
    """A Django DATABASES entry for a SQLite file (or ``":memory:"``)."""
    # IMMEDIATE: a transaction takes the write lock when it begins, so two processes that
    # both read then write wait for each other (up to the timeout) instead of one failing at
    # once with "database is locked" (SQLite cannot upgrade a reader that another writer
    # raced past).
    options = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    entry: dict = {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": options}
    if name != ":memory:":
        # WAL lets the Celery thread write usage while the admin reads.
        entry["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL;"
    return entry


def parse_database_url(name: str, url: str) -> dict:
    """A database URL → Django DATABASES entry.

    ``postgres://user:password@host:port/dbname?sslmode=...`` (or ``postgresql://``), and
    SQLite as dj-database-url spells it: ``sqlite:///relative/path.db`` (from the working
    directory), ``sqlite:////absolute/path.db``, ``sqlite://:memory:`` (or ``sqlite://``).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _parse_sqlite_url(name, url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"{name}: only postgres://, postgresql:// or sqlite:// URLs are supported, got "
            f"scheme {parts.scheme!r}"
        )
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ImproperlyConfigured(f"{name}: the URL must name one database, like .../llmproxy")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: the port is not a number") from None
    options: dict[str, str] = {}
    for pair in filter(None, parts.query.split("&")):
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise ImproperlyConfigured(f"{name}: malformed query parameter {pair!r}")
        options[unquote(key)] = unquote(val)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": dbname,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def _parse_sqlite_url(name: str, url: str) -> dict:
    # Split by hand: urlsplit would read ":memory:" as a host with a bad port.
    rest = url[len("sqlite:") :]
    if rest in {"//", "//:memory:"}:
        return sqlite_database(":memory:")
    if not rest.startswith("///") or "?" in rest or "#" in rest:
        raise ImproperlyConfigured(
            f"{name}: a SQLite URL is sqlite:///relative/path.db, sqlite:////absolute/path.db "
            "or sqlite://:memory: (no host, no query)"
        )
    path = unquote(rest[3:])
    if not path or path.endswith("/"):
        raise ImproperlyConfigured(
            f"{name}: the SQLite URL must name a file, like sqlite:///db.sqlite3"
        )
    return sqlite_database(Path(path).absolute())


def check_redis_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            f"{name}: expected a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}: the URL has no host")
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: the port is not a number") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ImproperlyConfigured(f"{name}: the database must be a number, got {db!r}")
    return url


# --- The local env file: NAME=value lines under the environment ---------------------------

ENV_FILE_VARIABLE = "LLMPROXY_ENV_FILE"
LOCAL_ENV_NAME = "local.env"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Read from the environment before the file is found: the file cannot move itself.
_NOT_IN_ENV_FILE = {ENV_FILE_VARIABLE, "LLMPROXY_DATA_DIR"}


def data_dir(env: Mapping[str, str], base_dir: Path) -> Path:
    return Path(env_str(env, "LLMPROXY_DATA_DIR", str(base_dir / "var")))


def env_file_path(env: Mapping[str, str], base_dir: Path) -> tuple[Path | None, bool]:
    """Where the local env file is, and whether it must exist.

    ``LLMPROXY_ENV_FILE`` names it (set but empty: no file); otherwise it is ``local.env`` in
    the data directory, read only if it exists.
    """
    if ENV_FILE_VARIABLE in env:
        named = env[ENV_FILE_VARIABLE].strip()
        return (Path(named), True) if named else (None, False)
    return data_dir(env, base_dir) / LOCAL_ENV_NAME, False


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; blank lines and lines starting with ``#`` are skipped. Values
    are taken as written (no quotes, no expansion)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{ENV_FILE_VARIABLE}: cannot read {str(path)!r}: {exc}"
        ) from exc
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name = name.strip()
        where = f"env file {path}, line {number}"
        # The line itself is not quoted back: it may hold a secret.
        if not sep or not _NAME.fullmatch(name):
            raise ImproperlyConfigured(f"{where}: expected NAME=value")
        if name in _NOT_IN_ENV_FILE:
            raise ImproperlyConfigured(f"{where}: {name} must be set in the environment")
        if name in values:
            raise ImproperlyConfigured(f"{where}: {name} is already set on line {lines[name]}")
        values[name] = value.strip()
        lines[name] = number
    return values


def _set_in(env: Mapping[str, str], name: str) -> bool:
    """NAME counts as set when NAME or NAME_FILE is, and NAME_FILE when NAME is."""
    if name in env or f"{name}_FILE" in env:
        return True
    return name.endswith("_FILE") and name.removesuffix("_FILE") in env


def with_env_file(env: Mapping[str, str], base_dir: Path) -> dict[str, str]:
    """The environment, with the local env file's variables added where it sets nothing."""
    path, required = env_file_path(env, base_dir)
    merged = dict(env)
    if path is None or not (required or path.exists()):
        return merged
    for name, value in read_env_file(path).items():
        if not _set_in(env, name):
            merged[name] = value
    return merged


def write_env_file(path: Path, values: Mapping[str, str], header: str) -> bool:
    """Create the env file with ``values`` unless it exists; True if it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    body += "".join(f"{name}={value}\n" for name, value in values.items())
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(body)
    return True


def dev_secret_key(path: Path) -> str:
    """A random key kept in an untracked file so debug sessions survive restarts."""
    from django.core.management.utils import get_random_secret_key

    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = get_random_secret_key()
    path.write_text(key)
    path.chmod(0o600)
    return key
