"""Synthetic usage at volume (``manage.py generateusage``): for the ledger's scale test and
bench/ledger.py. Raw rows go in by COPY on PostgreSQL (executemany on SQLite), then their
daily rollups by one INSERT ... SELECT ... GROUP BY, in the same transaction."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction

from accounts import services as key_services
from accounts.models import ApiKey, Team
from billing import rollups
from billing.models import UsageEvent

MODELS = ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5", "gpt-5.5", "gpt-5.5-mini")
CLIENTS = ("claude-code", "codex", "anthropic-python", "openai-python", "")
COLUMNS = ("request_id", "api_key_id", "team_id", "model", "endpoint", "client", "status",
           "kind", "attempts", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens", "tool_calls",
           "cost_usd", "latency_ms", "partial", "estimated", "error", "created_at",
           "upstream_model", "session_id", "agent_id", "credential")  # fmt: skip
CHUNK = 20_000


def holders(keys: int, teams: int) -> list[tuple[int, int | None]]:
    """(key id, team id) for ``keys`` generated keys spread over ``teams`` teams."""
    made = list(ApiKey.objects.filter(name__startswith="generated-").values_list("pk", "team_id"))
    team_rows = list(Team.objects.filter(name__startswith="generated-"))
    for index in range(len(team_rows), teams):
        team_rows.append(Team.objects.create(name=f"generated-{index}"))
    for index in range(len(made), keys):
        team = team_rows[index % len(team_rows)] if team_rows else None
        key, _ = key_services.create_key(name=f"generated-{index}", team=team)
        made.append((key.pk, key.team_id))
    return made[:keys]


def rows(count: int, days: int, owners: list, seed: int, run: str) -> Iterator[tuple]:
    chance = random.Random(seed)
    now = datetime.now(UTC)
    span = days * 86400
    for index in range(count):
        key_id, team_id = chance.choice(owners)
        model = chance.choice(MODELS)
        tokens_in, tokens_out = chance.randint(100, 20000), chance.randint(10, 4000)
        cost = (Decimal(tokens_in * 3 + tokens_out * 15) / 1_000_000).quantize(Decimal("1e-8"))
        yield (f"gen-{run}-{index}", key_id, team_id, model, "/v1/messages",
               chance.choice(CLIENTS), 200, "turn", 1, tokens_in, tokens_out, 0, 0, 0, 0, "{}",
               cost, chance.randint(200, 30000), False, False, "",
               now - timedelta(seconds=chance.randint(0, span)), "", "", "", "key")  # fmt: skip


@transaction.atomic
def generate(*, events: int, days: int = 90, keys: int = 100, teams: int = 10, seed: int = 1):
    """Insert ``events`` usage events over the last ``days`` days and their rollups."""
    owners = holders(keys, teams)
    run = uuid.uuid4().hex[:8]
    table = UsageEvent._meta.db_table
    generated = rows(events, days, owners, seed, run)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in generated:
                    copy.write_row(row)
        else:
            placeholders = ", ".join(["%s"] * len(COLUMNS))
            sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
            batch: list[tuple] = []
            for row in generated:
                batch.append((*row[:-5], row[-5].isoformat(sep=" "), *row[-4:]))
                if len(batch) >= CHUNK:
                    cursor.executemany(sql, batch)
                    batch = []
            if batch:
                cursor.executemany(sql, batch)
        cursor.execute(
            rollups.from_events_sql(connection.vendor, "request_id LIKE %s"), [f"gen-{run}-%"]
        )
    return run
