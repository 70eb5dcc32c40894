# aibaas — two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt venv bench clean audit

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Local development settings, written once and never overwritten (git-ignored): DEBUG on and a
# generated SECRET_KEY, so that `.venv/bin/python manage.py ...` works in any shell after
# `make run`. Production sets the environment instead and needs no .env.
.env:
	@umask 077 && { \
	  echo "# Local development only: written by 'make run', never overwritten, git-ignored."; \
	  echo "DEBUG=1"; \
	  echo "SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')"; \
	} > $@.tmp && mv -n $@.tmp $@ && rm -f $@.tmp
	@echo "wrote .env for local development (DEBUG=1, a generated SECRET_KEY)"

# `make run` is the local development server: DEBUG on unless the environment says otherwise.
run: export DEBUG ?= 1
run: .env venv
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py bootstrap
	@echo "aibaas on http://$(HOST):$(PORT)/  (dashboard: /dashboard/, admin: /admin/)"
	$(BIN)/uvicorn aibaas.asgi:application --host $(HOST) --port $(PORT) --lifespan on --no-proxy-headers

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/lint-imports --no-cache

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Known vulnerabilities in the runtime set (README, "Known vulnerabilities"). Needs pypi.org.
audit: venv
	$(BIN)/pip-audit -r requirements.txt --strict --no-deps --disable-pip

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles

# The project's benchmarks (budgets in DESIGN.md and the issues). Uses DATABASE_URL/REDIS_URL
# when set, else a throwaway SQLite file and the in-process cache.
bench: venv
	$(BIN)/python -m aibaas.bench
