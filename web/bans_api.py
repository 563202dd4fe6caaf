"""(being built)"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("bans", __name__)
