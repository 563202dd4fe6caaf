"""Rewrites the configuration table of README.md from config.SETTINGS: `python -m tests.readme_config`."""

import json
from pathlib import Path

from config import SETTINGS

README = Path(__file__).parent.parent / "README.md"


def table() -> str:
    lines = ["| Key | Default | What it does |", "|---|---|---|"]
    for s in SETTINGS:
        default = json.dumps(s.default, ensure_ascii=False) if isinstance(s.default, dict | list) else s.default
        shown = "—" if default is None else f"`{default}`"
        lines.append(f"| `{s.name}` | {shown} | {s.doc}{' (secret)' if s.secret else ''} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    start, end = "<!-- config:start -->\n", "<!-- config:end -->"
    head, rest = text.split(start, 1)
    return head + start + table() + "\n" + end + rest.split(end, 1)[1]


if __name__ == "__main__":
    README.write_text(rewrite(README.read_text(encoding="utf-8")), encoding="utf-8")
