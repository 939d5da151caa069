# llmproxy: `make run` starts the gateway on its embedded default, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN = $(VENV)/bin

.PHONY: run test install clients clients-latest test-clients-latest lint format bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The embedded default: SQLite in var/, no Redis, one process. Prints the admin URL and login.
# var/local.env (written once, DJANGO_DEBUG=true) gives every manage.py command the same setup.
run: install
	$(BIN)/python -m llmproxy.localenv DJANGO_DEBUG=$${DJANGO_DEBUG:-true}
	$(BIN)/python manage.py bootstrap --url http://$(HOST):$(PORT)
	$(BIN)/python -m llmproxy serve --host $(HOST) --port $(PORT) --no-access-log

# The real Claude Code and Codex CLIs for the end-to-end tests (skipped locally without npm).
clients:
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix clients --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the CLI tests will be skipped"; fi

# The newest published Claude Code and Codex, in var/clients-latest, and the CLI tests run
# against them: a client release that changes the protocol is found by a test, not by users.
clients-latest:
	mkdir -p var/clients-latest
	echo '{"name": "llmproxy-latest-clients", "private": true}' > var/clients-latest/package.json
	npm install --prefix var/clients-latest --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@latest @openai/codex@latest
	var/clients-latest/node_modules/.bin/claude --version
	var/clients-latest/node_modules/.bin/codex --version

test-clients-latest: install clients-latest
	LLMPROXY_CLIENTS_DIR=$(CURDIR)/var/clients-latest $(BIN)/pytest -m cli

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
