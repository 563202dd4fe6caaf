# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export FLASK_APP := app

.PHONY: run test lint format bench jobs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The app on the embedded defaults: SQLite, in-process limits, the WeChat simulator, demo data.
run: $(VENV)/.installed
	WECHAT_MODE=simulator SEED_DEMO_DATA=1 RUN_JOBS_IN_PROCESS=1 PUBLIC_BASE_URL=$${PUBLIC_BASE_URL:-http://127.0.0.1:5000} \
		$(VENV)/bin/flask db upgrade
	WECHAT_MODE=simulator SEED_DEMO_DATA=1 RUN_JOBS_IN_PROCESS=1 PUBLIC_BASE_URL=$${PUBLIC_BASE_URL:-http://127.0.0.1:5000} \
		$(VENV)/bin/flask seed-demo
	WECHAT_MODE=simulator SEED_DEMO_DATA=1 RUN_JOBS_IN_PROCESS=1 PUBLIC_BASE_URL=$${PUBLIC_BASE_URL:-http://127.0.0.1:5000} \
		$(VENV)/bin/flask run --host 127.0.0.1 --port $${PORT:-5000} --no-reload --with-threads

# The suite on SQLite, then again on PostgreSQL when TEST_DATABASE_URL is set.
test: $(VENV)/.dev-installed
	TEST_DB_BACKEND=sqlite $(PY) -m pytest -q
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
		echo "== again on PostgreSQL ($$TEST_DATABASE_URL)"; \
		TEST_DB_BACKEND=postgres $(PY) -m pytest -q; \
	fi

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.dev-installed
	$(PY) -m bench

jobs: $(VENV)/.installed
	$(VENV)/bin/flask jobs run

clean:
	rm -rf $(VENV) instance
