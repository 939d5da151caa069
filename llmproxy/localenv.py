"""``python -m llmproxy.localenv NAME=value ...``: create the local env file (``make run``).

Writes the given variables to the file settings.py reads (``local.env`` in the data
directory, or the file LLMPROXY_ENV_FILE names) if that file does not exist yet; an
existing file is left as it is. Imports no settings, so it runs before any are valid.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llmproxy.env import env_file_path, write_env_file

BASE_DIR = Path(__file__).resolve().parent.parent
HEADER = """Local settings of this checkout, written by `make run` when the file was missing.
Every manage.py, uvicorn and celery process started with this data directory reads it;
a variable set in the environment wins. One NAME=value per line, taken as written."""


def main(argv: list[str]) -> int:
    values = {}
    for argument in argv:
        name, sep, value = argument.partition("=")
        if not sep or not name:
            sys.stderr.write(f"localenv: expected NAME=value, got {argument!r}\n")
            return 2
        values[name] = value
    path, _ = env_file_path(os.environ, BASE_DIR)
    if path is None:  # LLMPROXY_ENV_FILE is set empty: no local env file
        return 0
    if write_env_file(path, values, HEADER):
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        sys.stdout.write(f"Local settings: wrote {path} ({shown})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
