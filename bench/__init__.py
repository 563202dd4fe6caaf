"""Benchmarks (docs/architecture.md §8): each measures a path against a baseline in the same run and prints the ratio.

Every module named ``*_bench.py`` has ``run()``, which builds its own throw-away
data (a temporary SQLite file, and PostgreSQL when ``BENCH_DATABASE_URL`` is
set) and yields one line per benchmark. ``python -m bench`` runs them all.
Never timed tests: figures depend on the machine; only the ratio means much.
"""
