"""``python -m bench [name ...]``: run every ``bench/*_bench.py`` (or the named ones), one line each
(progress on stderr).

Names: ``notify``, ``claims``, ``dispatch``, ``replay`` (``simulate`` is its former name), ``balance``, ``risk``,
``report``, ``bills``. Those on PostgreSQL (notify, claims, dispatch, report) need ``BENCH_DATABASE_URL``; without
it they say so and are skipped. ``python -m bench.gunicorn_sweep`` and ``python -m bench.instructions`` are run by
name only.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench
from bench.harness import progress

ALIASES = {"simulate": "replay"}


def modules(only: list[str]) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.endswith("_bench"))
    wanted = {ALIASES.get(n, n) for n in only}
    return [n for n in names if not only or n in wanted or n.removesuffix("_bench") in wanted]


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        names = ", ".join(n.removesuffix("_bench") for n in modules([]))
        print(f"\nbenchmarks here: {names}")
        return 0
    found = modules(argv)
    if not found:
        print(f"no benchmark matches {argv}", file=sys.stderr)
        return 2
    for name in found:
        progress(f"{name}: starting")
        for line in importlib.import_module(f"bench.{name}").run():
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
