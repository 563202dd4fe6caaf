"""``python -m bench [name ...]``: run every ``bench/*_bench.py`` (or the named ones), one line each
(progress on stderr).

Names: ``notify``, ``claims``, ``dispatch``, ``replay`` (``simulate`` is its former name). The HTTP
benchmarks (notify, claims) need ``BENCH_DATABASE_URL``; without it they say so and are skipped.
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
