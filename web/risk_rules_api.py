"""(being built)"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("risk_rules", __name__)
