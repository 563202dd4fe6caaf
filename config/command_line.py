"""``flask …`` with a refused configuration: its list, never a traceback (``create_app`` is wrapped).

Flask's command line loads the app inside a click context. For a command
(``flask db upgrade``, ``flask run``, ``flask jobs run``) the refusal becomes a
``ClickException``: ``Error: <the list>`` and exit 1. While Flask only lists the
commands (``flask --help``) it becomes Flask's ``NoAppException``, whose message
the help prints above itself before going on. Outside the command line
(gunicorn, whose ``deploy/gunicorn.conf.py`` checks the settings before any
worker starts; tests) the ``ConfigError`` is raised as it is.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import NoAppException

from config import ConfigError


class _RefusedForCommands(NoAppException):
    """Flask's help prints a NoAppException's message (no traceback) and lists its own commands."""


def readable_on_command_line(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Under ``flask …`` a refused configuration is its list, never a traceback; elsewhere it raises as is."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except ConfigError as exc:
            if click.get_current_context(silent=True) is None:
                raise
            if _listing_commands():
                raise _RefusedForCommands(exc.report()) from None
            raise click.ClickException(exc.report()) from None

    return build


def _listing_commands() -> bool:
    """Is Flask's command line loading the app only to list its commands (``flask --help``)?"""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "list_commands" and frame.f_globals.get("__name__") == "flask.cli":
            return True
        frame = frame.f_back
    return False
