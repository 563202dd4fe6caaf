"""Layers import only downwards (docs/architecture.md §2), read from the source with ``ast``.

money < models < ledger < notices, payouts < risk < rebate < challenges < insights < shell (web, jobs) < app.py.
``notices`` and ``payouts`` share a level (both outboxes) and do not import each other.
``wechat`` is a leaf: it imports nothing of ours, and only payouts and the shell use it.
``rebate/rules.py`` is pure: ``money`` and the standard library only.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {
    "money": 0,
    "models": 1,
    "ledger": 2,
    "notices": 3,
    "payouts": 3,
    "risk": 4,
    "rebate": 5,
    "challenges": 6,
    "insights": 7,
}
SHELL = {"web", "jobs"}
OURS = {*RANK, *SHELL, "wechat", "config", "app", "bench", "tests"}
WECHAT_USERS = {"payouts", *SHELL}


def sources() -> list[Path]:
    files = [ROOT / "money.py"] if (ROOT / "money.py").exists() else []
    for package in [*RANK, *SHELL, "wechat"]:
        if (ROOT / package).is_dir():
            files += sorted((ROOT / package).rglob("*.py"))
    return files


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name imported anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]  # the file's own package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package[: len(package) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if not node.module:
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violation(importer: str, imported: str) -> str | None:
    if imported not in OURS or imported == importer:
        return None
    if imported in {"app", "tests", "bench"}:
        return f"{imported} is never imported by application code"
    if importer == "wechat":
        return "wechat is a leaf and imports nothing of ours"
    if imported == "wechat":
        return None if importer in WECHAT_USERS else f"only {sorted(WECHAT_USERS)} may use wechat"
    if imported == "config":
        return None if importer in SHELL else "config is read by the app factory and the shell only"
    if importer in SHELL:
        return f"{importer} and {imported} are both the shell" if imported in SHELL else None
    if imported in SHELL:
        return f"{importer} (a lower layer) imports the shell"
    if RANK[imported] > RANK[importer]:
        return f"{importer} (layer {RANK[importer]}) imports {imported} (layer {RANK[imported]})"
    if RANK[imported] == RANK[importer]:
        return f"{importer} and {imported} stand side by side (layer {RANK[importer]}) and do not import each other"
    return None


def all_violations() -> list[str]:
    problems = []
    for path in sources():
        importer = layer_of(path)
        for lineno, module in imported_modules(path):
            why = violation(importer, module.split(".")[0])
            if why:
                problems.append(f"{path.relative_to(ROOT)}:{lineno}: imports {module}: {why}")
    return problems


def test_layers_import_only_downwards():
    assert all_violations() == []


def test_rebate_rules_is_pure():
    rules = ROOT / "rebate" / "rules.py"
    # No skip: if the pure core moves, this test must move with it, not pass quietly.
    assert rules.is_file(), "rebate/rules.py is the pure core; moved? point this test at its new home"
    allowed = set(sys.stdlib_module_names) | {"money", "__future__"}
    bad = [(n, m) for n, m in imported_modules(rules) if m.split(".")[0] not in allowed]
    assert bad == [], "rebate/rules.py imports only money and the standard library"


def test_nothing_imports_app():
    for path in [*sources(), *(ROOT / "config").rglob("*.py")]:
        for lineno, module in imported_modules(path):
            assert module.split(".")[0] != "app", f"{path.relative_to(ROOT)}:{lineno}"


def test_config_imports_nothing_of_ours():
    for path in (ROOT / "config").rglob("*.py"):
        for lineno, module in imported_modules(path):
            assert module.split(".")[0] not in OURS - {"config"}, f"{path.relative_to(ROOT)}:{lineno}"


def names_imported_from(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package
        for alias in node.names
    }


CLAIM_LIMITS = {
    "enforce_claim_limits",
    "enforce_platform_limits",
    "take_platform_daily",
    "ClaimGate",
    "record_refusal",
    "take_device_token_slot",
}


def test_rebate_takes_the_claim_limits_from_risk_and_no_blueprint_does():
    """The design's rebate → risk arrow: the claim operations call the limits; the shell only passes settings."""
    assert names_imported_from(ROOT / "rebate" / "claims.py", "risk") & CLAIM_LIMITS
    for path in [*(ROOT / "web").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]:
        called = names_imported_from(path, "risk") & CLAIM_LIMITS
        assert not called, f"{path.relative_to(ROOT)} takes claim limits itself: {sorted(called)}"


@pytest.mark.parametrize("module", ["claims", "triggers", "packets", "campaign_ops", "scope"])
def test_the_claim_and_campaign_operations_read_no_settings_or_request(module):
    """Settings (``PlatformLimits``) and the operator (``Actor``) are passed in, not read from flask."""
    path = ROOT / "rebate" / f"{module}.py"
    assert [m for _, m in imported_modules(path) if m.split(".")[0] == "flask"] == []


def flask_reads(source: str) -> list[str]:
    """Where a module imports flask or names ``current_app`` (say, through a flask import under another name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "flask"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flask":
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Name | ast.Attribute | ast.alias):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", None)
            if name == "current_app":
                found.append(f"{getattr(node, 'lineno', '?')}: current_app")
    return found


@pytest.mark.parametrize("package", ["rebate", "payouts"])
def test_rebate_and_payouts_read_no_settings_from_flask(package):
    """Settings (``MoneySettings``, ``PayAccount``, ``DispatchSettings``, ``PlatformLimits``) are passed in by the
    shell: nothing in ``rebate/`` or ``payouts/`` imports flask or reaches for ``current_app``."""
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ moved? point this test at its new home"
    found = {str(p.relative_to(ROOT)): flask_reads(p.read_text(encoding="utf-8")) for p in files}
    assert {path: reads for path, reads in found.items() if reads} == {}


def test_jobs_reach_the_wechat_clients_only_through_their_context():
    """``jobs/`` is handed the WeChat clients at set-up (``job_context``); it never looks in ``app.extensions``
    for objects the web wiring keeps there."""
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        looks = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "extensions"
            and not (isinstance(node.slice, ast.Name) and node.slice.id == "EXTENSION")
        ]
        assert looks == [], f"{path.relative_to(ROOT)} reads app.extensions at lines {looks}"


@pytest.mark.parametrize(
    "source",
    [
        "from flask import current_app",
        "import flask",
        "from flask.globals import g",
        "import app_settings as s\nx = s.current_app.config",
    ],
)
def test_the_flask_scan_catches_what_it_should(source):
    assert flask_reads(source) != []


def test_the_flask_scan_passes_plain_code():
    assert flask_reads("from payouts import MoneySettings\nminimum = money.payout_min_fen") == []


# --- the checker itself catches what it should ---------------------------------------------


@pytest.mark.parametrize(
    ("importer", "imported", "bad"),
    [
        ("models", "money", False),
        ("ledger", "models", False),
        ("money", "models", True),
        ("models", "ledger", True),
        ("ledger", "payouts", True),
        ("payouts", "ledger", False),
        ("payouts", "rebate", True),
        ("rebate", "risk", False),
        ("risk", "rebate", True),
        ("rebate", "challenges", True),
        ("challenges", "rebate", False),
        ("insights", "challenges", False),
        ("insights", "rebate", False),
        ("insights", "models", False),
        ("rebate", "insights", True),
        ("challenges", "insights", True),
        ("payouts", "insights", True),
        ("insights", "web", True),
        ("insights", "jobs", True),
        ("web", "insights", False),
        ("jobs", "insights", False),
        ("insights", "wechat", True),
        ("notices", "ledger", False),
        ("notices", "payouts", True),
        ("payouts", "notices", True),
        ("ledger", "notices", True),
        ("risk", "notices", False),
        ("rebate", "web", True),
        ("web", "rebate", False),
        ("jobs", "payouts", False),
        ("web", "jobs", True),
        ("jobs", "web", True),
        ("wechat", "money", True),
        ("wechat", "models", True),
        ("payouts", "wechat", False),
        ("web", "wechat", False),
        ("rebate", "wechat", True),
        ("ledger", "wechat", True),
        ("ledger", "config", True),
        ("web", "config", False),
        ("web", "app", True),
        ("models", "requests", False),
    ],
)
def test_violation_rules(importer, imported, bad):
    assert (violation(importer, imported) is not None) is bad


def test_import_parser_sees_nested_and_relative_imports(tmp_path, monkeypatch):
    package = tmp_path / "ledger"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "thing.py"
    module.write_text("from . import accounts\nfrom .check import x\n\ndef f():\n    import payouts.outbox\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(module) == [
        (1, "ledger"),
        (1, "ledger.accounts"),
        (2, "ledger.check"),
        (5, "payouts.outbox"),
    ]
