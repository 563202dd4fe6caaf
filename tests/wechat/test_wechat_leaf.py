"""``wechat`` is a leaf: it imports only stdlib, third-party packages and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

WECHAT_DIR = Path(__file__).resolve().parents[2] / "wechat"
THIRD_PARTY = {"requests", "cryptography", "flask", "markupsafe", "defusedxml", "wechatpy", "redis", "sqlalchemy"}
# requests' own transport: wechat.http tells a connection never made (urllib3's NewConnectionError) from one dropped
THIRD_PARTY |= {"urllib3"}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path.name}: use absolute wechat.* imports")
    return names


def test_wechat_imports_nothing_of_the_project():
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY | {"wechat", "__future__"}
    for path in sorted(WECHAT_DIR.rglob("*.py")):  # the simulator in wechat/sim/ too
        foreign = _top_level_imports(path) - allowed
        assert not foreign, f"{path.name} imports {sorted(foreign)}"
