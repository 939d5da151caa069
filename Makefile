# llmproxy: `make run` starts the gateway on its embedded default, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN = $(VENV)/bin

.PHONY: run test install clients lint format bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The embedded default: SQLite in var/, no Redis, one process. Prints the admin URL and login.
run: install
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(BIN)/python manage.py bootstrap --url http://$(HOST):$(PORT)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(BIN)/python -m llmproxy serve \
		--host $(HOST) --port $(PORT) --no-access-log

# The real Claude Code and Codex CLIs for the end-to-end tests (skipped locally without npm).
clients:
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix clients --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the CLI tests will be skipped"; fi

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench
