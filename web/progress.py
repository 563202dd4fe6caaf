"""Progress of long command-line work, on stderr: stdout stays what scripts and tests parse.

``Steps("seed-demo")("campaigns")`` writes ``seed-demo: campaigns (0.3 s)``; ``bar`` is a
``click.progressbar`` on stderr (on a terminal it redraws; elsewhere it writes its label once).
"""

from __future__ import annotations

import sys
import time

import click


class Steps:
    """One line per phase on stderr, with the seconds since the work began."""

    def __init__(self, what: str) -> None:
        self.what, self.started = what, time.monotonic()

    def __call__(self, message: str) -> None:
        click.echo(f"{self.what}: {message} ({time.monotonic() - self.started:.1f} s)", err=True)


def bar(length: int, label: str):
    return click.progressbar(length=length, label=label, file=sys.stderr)
