"""ECharts options for the console's charts, built here so every page draws alike.

Amounts arrive in fen and are drawn in yuan (display only: ``fen / 100`` to two places; the numbers
people act on are the tables' exact yuan strings). A page passes the option to the ``chart`` macro
(templates/console/_macros.html); static/console.js draws it with the vendored ECharts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PALETTE = ["#c8102e", "#2f6fde", "#1a7f37", "#b54708", "#7a5af8", "#646a73"]


def to_yuan(values: Sequence[int | None]) -> list[float | None]:
    return [None if v is None else round(v / 100, 2) for v in values]


def _axis_chart(kind: str, categories: Sequence[str], series: Mapping[str, Sequence], title: str, unit: str) -> dict:
    return {
        "color": PALETTE,
        "title": {"text": title, "left": 8, "textStyle": {"fontSize": 14}},
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 4, "right": 8},
        "grid": {"left": 56, "right": 24, "top": 48, "bottom": 32},
        "xAxis": {"type": "category", "data": list(categories)},
        "yAxis": {"type": "value", "name": unit},
        "series": [
            {"name": name, "type": kind, "data": list(values), **({"smooth": True} if kind == "line" else {})}
            for name, values in series.items()
        ],
    }


def line(categories: Sequence[str], series: Mapping[str, Sequence], title: str = "", unit: str = "") -> dict:
    """One line per series over ``categories`` (periods)."""
    return _axis_chart("line", categories, series, title, unit)


def bars(categories: Sequence[str], series: Mapping[str, Sequence], title: str = "", unit: str = "") -> dict:
    """Grouped bars per series over ``categories``."""
    return _axis_chart("bar", categories, series, title, unit)


def pie(items: Sequence[tuple[str, float]], title: str = "") -> dict:
    """Shares: (name, value) pairs."""
    return {
        "color": PALETTE,
        "title": {"text": title, "left": 8, "textStyle": {"fontSize": 14}},
        "tooltip": {"trigger": "item"},
        "series": [{"type": "pie", "radius": ["35%", "65%"], "data": [{"name": n, "value": v} for n, v in items]}],
    }


def gauge(used_fen: int, limit_fen: int | None, title: str = "预算 Budget") -> dict:
    """Budget used as a percentage of the limit (no limit: the gauge shows 0 and says so)."""
    percent = 0.0 if not limit_fen else round(min(used_fen / limit_fen, 1.0) * 100, 1)
    return {
        "title": {"text": title, "left": "center", "textStyle": {"fontSize": 14}},
        "series": [
            {
                "type": "gauge",
                "min": 0,
                "max": 100,
                "progress": {"show": True},
                "detail": {"formatter": "{value}%", "fontSize": 18},
                "data": [{"value": percent, "name": "已用 used" if limit_fen else "无上限 no limit"}],
            }
        ],
    }
