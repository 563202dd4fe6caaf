# The README's commands: `make run` and `make test` (set-up included); `make demo`, `make reset`,
# `make jobs`, `make lint`, `make bench` beside them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export FLASK_APP := app

.PHONY: run demo reset test lint format bench jobs clean

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
# The per-network-address claim limits are off here: every request of a local run, the simulator's
# and `make demo`'s included, comes from 127.0.0.1, so one address would stand for everybody (the
# per-person and per-device limits stay on). Production keeps the defaults (README, Configuration).
# One proxy is trusted (TRUSTED_PROXY_COUNT=1): `make demo` gives each of its people a phone on a network of its
# own in X-Forwarded-For, as phones reach a real deployment through its proxy (so any local client may claim any
# address here: a local demo only).
PORT ?= 5000
PUBLIC_BASE_URL ?= http://127.0.0.1:$(PORT)
DEMO_ENV := WECHAT_MODE=simulator SEED_DEMO_DATA=1 RUN_JOBS_IN_PROCESS=1 PUBLIC_BASE_URL=$(PUBLIC_BASE_URL) \
	CLAIM_IP_PER_DAY=0 CLAIM_IP_INTERVAL_SECONDS=0 INSIGHTS_ROLLUP_SECONDS=30 CHALLENGE_SETTLE_SECONDS=5 \
	TRUSTED_PROXY_COUNT=1

run: $(VENV)/.installed
	$(DEMO_ENV) $(VENV)/bin/flask db upgrade
	$(DEMO_ENV) $(VENV)/bin/flask seed-demo
	$(DEMO_ENV) $(VENV)/bin/flask run --host 127.0.0.1 --port $(PORT) --no-reload --with-threads

# The README's walkthrough, played against the server `make run` is serving (run it again at will).
demo: $(VENV)/.installed
	$(DEMO_ENV) $(PY) -m demo --base-url $(PUBLIC_BASE_URL)

# Fresh demo data: the SQLite demo database and instance files go, the virtualenv stays; the next
# `make run` migrates and seeds again. Stop `make run` first.
reset: $(VENV)/.installed
	@if [ -n "$$DATABASE_URL" ]; then echo "make reset resets the SQLite demo database only; unset DATABASE_URL" >&2; exit 1; fi
	rm -rf instance rebate.db rebate.db-wal rebate.db-shm rebate.wechat_sim.db rebate.wechat_sim.db-wal rebate.wechat_sim.db-shm
	$(DEMO_ENV) $(VENV)/bin/flask db upgrade
	$(DEMO_ENV) $(VENV)/bin/flask seed-demo

# The suite on SQLite and, when TEST_DATABASE_URL is set, again on PostgreSQL. The two runs go at
# once, one per core (each is one process, and on SQLite that process is nearly all the work): the
# PostgreSQL run's report is kept and printed after SQLite's; either failing fails the target.
test: $(VENV)/.dev-installed
	@if [ -z "$$TEST_DATABASE_URL" ]; then \
		TEST_DB_BACKEND=sqlite $(PY) -m pytest -q; \
	else \
		log=$$(mktemp); \
		echo "== on SQLite, and on PostgreSQL ($$TEST_DATABASE_URL) at the same time"; \
		TEST_DB_BACKEND=postgres $(PY) -m pytest -q -p no:cacheprovider >"$$log" 2>&1 & pg=$$!; \
		TEST_DB_BACKEND=sqlite $(PY) -m pytest -q; sqlite=$$?; \
		wait $$pg; postgres=$$?; \
		echo "== on PostgreSQL ($$TEST_DATABASE_URL)"; cat "$$log"; rm -f "$$log"; \
		echo "== SQLite: exit $$sqlite; PostgreSQL: exit $$postgres"; \
		[ $$sqlite -eq 0 ] && [ $$postgres -eq 0 ]; \
	fi

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.dev-installed
	$(PY) -m bench

# The scheduler as its own process beside `make run`, on the same demo database and simulator (the
# simulator's state is shared, so what this process sends the web server's /_sim/ shows). In
# production run `flask jobs run` with the deployment's environment (README, Deployment).
jobs: $(VENV)/.installed
	$(DEMO_ENV) $(VENV)/bin/flask jobs run

clean:
	rm -rf $(VENV) instance
