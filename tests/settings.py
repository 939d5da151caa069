"""Test settings: the real settings, with a test secret, a scratch data directory and no local
env file.

DATABASE_URL and REDIS_URL pass through, so the same suite runs embedded (neither set) or
scaled (CI sets both).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
# A developer's var/local.env (written by `make run`) must not change what the tests see; the
# processes the tests start inherit this too.
os.environ["LLMPROXY_ENV_FILE"] = ""
if "LLMPROXY_DATA_DIR" not in os.environ:
    os.environ["LLMPROXY_DATA_DIR"] = tempfile.mkdtemp(prefix="llmproxy-test-")
    atexit.register(shutil.rmtree, os.environ["LLMPROXY_DATA_DIR"], ignore_errors=True)

from llmproxy.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests

# Usage is written in-process here; the tests of the Celery pipeline itself start a real
# worker process with the production settings.
CELERY_TASK_ALWAYS_EAGER = True
# ... in the usage thread of the test process: a writer process would not see the test
# database (it would be refused and the thread used anyway). The gateways the tests start as
# processes use the writer process (tests/gateway/test_usage_writer.py).
LLMPROXY_USAGE_WRITER_PROCESS = False

# Close the database connection at the end of each request the test servers handle, so no
# server thread still holds one when the test database is dropped.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405

# Hang-ups: tests that depend on how long an abandoned call reads on set it themselves.
LLMPROXY_ABANDONED_READ_SECONDS = 0.3

# Provider failures answer at once (the failover and overload tests set their own budget).
LLMPROXY_RETRY_SECONDS = 0.0

# The fake providers listen on 127.0.0.1: loopback base URLs are allowed here (and in the
# processes the tests start, which are given LLMPROXY_ALLOW_PRIVATE_UPSTREAMS=true).
LLMPROXY_ALLOW_PRIVATE_UPSTREAMS = True
