"""A migrated database has the shipped price table; migrate never overwrites an admin's edit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import services
from billing.models import Price

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = json.loads(services.PRICES_FILE.read_text())["prices"]
PATTERNS = {row["model_pattern"] for row in SHIPPED}


@pytest.mark.django_db
def test_the_migrated_test_database_has_every_shipped_row():
    assert set(Price.objects.values_list("model_pattern", flat=True)) >= PATTERNS
    haiku = next(row for row in SHIPPED if row["model_pattern"] == "claude-haiku-4-5*")
    stored = Price.objects.get(model_pattern="claude-haiku-4-5*")
    assert stored.input_per_mtok == Decimal(haiku["input_per_mtok"])
    assert stored.output_per_mtok == Decimal(haiku["output_per_mtok"])
    assert stored.source == haiku.get("source", "")


@pytest.mark.django_db(transaction=True)
def test_a_flushed_database_gets_them_again():
    """What pytest-django does after each transactional test: flush, which re-emits
    post_migrate (without the migration state)."""
    Price.objects.all().delete()
    call_command("flush", interactive=False, verbosity=0)
    assert set(Price.objects.values_list("model_pattern", flat=True)) == PATTERNS


@pytest.mark.django_db
def test_migrate_adds_missing_rows_and_never_overwrites_an_edited_one():
    Price.objects.filter(model_pattern="claude-haiku-4-5*").update(input_per_mtok=42)
    Price.objects.filter(model_pattern="gpt-5*").delete()
    Price.objects.create(model_pattern="in-house-*", input_per_mtok=1, output_per_mtok=2)
    call_command("migrate", verbosity=0)
    assert Price.objects.get(model_pattern="claude-haiku-4-5*").input_per_mtok == 42
    assert Price.objects.filter(model_pattern="gpt-5*").count() == 1
    assert Price.objects.filter(model_pattern="in-house-*").exists()
    assert Price.objects.count() == len(PATTERNS) + 1


@pytest.mark.django_db
def test_the_handler_is_one_query_and_at_most_one_insert():
    with CaptureQueriesContext(connection) as nothing_missing:
        assert services.add_shipped_prices() == 0
    assert len(nothing_missing) == 1
    Price.objects.all().delete()
    with CaptureQueriesContext(connection) as all_missing:
        assert services.add_shipped_prices() == len(PATTERNS)
    assert len(all_missing) == 2
    assert Price.objects.count() == len(PATTERNS)


def test_a_fresh_deploy_migrate_loads_the_price_table(tmp_path):
    """What a scaled deploy runs before the gateways start: `manage.py migrate`, nothing else."""
    environment = {
        "PATH": os.environ["PATH"],
        "DJANGO_SECRET_KEY": "deploy-secret",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "LLMPROXY_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"Prices: {len(PATTERNS)} shipped rows added from prices.json" in result.stdout
    database = sqlite3.connect(tmp_path / "deploy.sqlite3")
    stored = {row[0] for row in database.execute("select model_pattern from billing_price")}
    database.close()
    assert stored == PATTERNS
