"""``flask risk …``: (being built)."""

from __future__ import annotations

from flask.cli import AppGroup

risk_cli = AppGroup("risk", help="Risk: the seeded simulation.")
