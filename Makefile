# P2P Portal: `make run` starts the product with demo data, `make test` runs the whole suite.
# Both prepare everything first: Debian packages (when root), the virtualenv, requirements and migrations.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := docker-registry skopeo chromium redis-server apache2-utils prometheus nodejs npm
# Commands the packages above provide, in the same order.
DEBIAN_COMMANDS := docker-registry skopeo chromium redis-server htpasswd promtool node npm
PG_URL := postgres://postgres@127.0.0.1:5432/p2p_portal

.PHONY: run test setup system-packages venv migrate redis lint bench clean

setup: system-packages venv

system-packages:
	@missing=""; pkgs=($(DEBIAN_PACKAGES)); cmds=($(DEBIAN_COMMANDS)); \
	for i in $${!cmds[@]}; do command -v $${cmds[$$i]} >/dev/null || missing="$$missing $${pkgs[$$i]}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "Missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

venv: $(VENV)/.installed

# requirements-dev.txt adds the test, lint and bench packages to the runtime ones in requirements.txt.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# Redis at REDIS_URL when it answers; otherwise, when REDIS_URL is on this machine, a local redis-server on its port
# with its data under var/redis (see p2p_portal/local_redis.py).
redis: venv
	@mkdir -p var
	@$(PY) -m p2p_portal.local_redis

migrate: venv
	@mkdir -p var
	$(PY) manage.py migrate --noinput

# With no EMAIL_HOST the demo's emails are printed by the worker (P2P_EMAIL_CONSOLE): that is where mail would go.
run: setup redis migrate
	P2P_EMAIL_CONSOLE=$${P2P_EMAIL_CONSOLE:-1} $(VENV)/bin/honcho start -f Procfile

# Tests use PostgreSQL when it answers on 127.0.0.1:5432 (DATABASE_URL overrides), else SQLite with the
# PostgreSQL-only tests skipped; Redis databases 15 and 14 keep test jobs apart from a running portal's.
# The suite runs as two processes side by side (tests/run_suite.sh); PYTEST_ARGS runs one pytest with them instead.
test: setup redis
	@if [ -z "$$DATABASE_URL" ] && $(PY) -c "import psycopg; psycopg.connect('$(PG_URL:p2p_portal=postgres)', connect_timeout=2).close()" 2>/dev/null; then \
	  export DATABASE_URL=$(PG_URL); fi; \
	export REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}; \
	echo "Testing against $${DATABASE_URL:-SQLite} and $$REDIS_URL"; \
	if [ -n "$(PYTEST_ARGS)" ]; then $(PY) -m pytest $(PYTEST_ARGS); else tests/run_suite.sh $(PY); fi

# import-linter keeps imports running one way (the contracts are in pyproject.toml); ruff keeps the format.
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup redis
	$(PY) bench/copy_bench.py

clean:
	rm -rf var/static var/test-output
