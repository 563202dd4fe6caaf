"""Benchmarks (docs/architecture.md §8): each measures a path against a baseline in the same run and prints the ratio.

Every module named ``*_bench.py`` has ``run()``, which builds its own throw-away
data and yields one line per benchmark; ``python -m bench [name ...]`` runs them
(all of them without a name). ``replay`` works on a temporary SQLite file, and
on PostgreSQL too when ``BENCH_DATABASE_URL`` is set; ``notify`` and ``claims``
start gunicorn against a database they create beside ``BENCH_DATABASE_URL`` and
drop afterwards (bench/harness.py), and measure against the empty route.
Never timed tests: figures depend on the machine; only the ratio means much.
"""
