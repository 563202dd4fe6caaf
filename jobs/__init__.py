"""Scheduled work: APScheduler 3 set-up (``scheduler.py``) and the job functions (``orders.py``, ``payouts.py``).

Jobs run in their own process per node (``flask jobs run``, memory job store)
and are safe when several nodes run them: rows are claimed with ``SELECT …
FOR UPDATE SKIP LOCKED`` and, on PostgreSQL, worked under a session-level
advisory lease that needs no open transaction. No transaction is ever open
during a WeChat call; every step re-checks the row under its lock before
writing, so a second runner finds nothing left to do. Every job reaches the
WeChat clients and the money settings through one accessor,
``jobs.payouts.job_context``, filled at app set-up (``install_jobs``).
"""
