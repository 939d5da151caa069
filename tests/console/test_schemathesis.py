"""Schemathesis against the live OpenAPI schema: no 5xx, no response that breaks the schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accounts import services as key_services

pytestmark = pytest.mark.e2e


def test_no_server_errors_and_responses_match_the_schema(gateway, django_user_model, tmp_path):
    staff = django_user_model.objects.create_superuser("fuzzer", "fuzzer@example.com", None)
    _, token = key_services.create_api_token(user=staff, name="schemathesis")
    key_services.create_key(name="seed", owner=staff)
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis (st) is installed with the dev extras"
    result = subprocess.run(
        [
            st, "run", f"{gateway.url}/api/schema/?format=json", "--url", gateway.url,
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing", "--max-examples", "5",
            "--max-time", "90", "--workers", "1", "--request-timeout", "10", "--seed", "1",
            "--suppress-health-check", "all",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
