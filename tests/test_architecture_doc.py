"""The project explains itself: every ``docs/architecture.md §N`` cited in the repository exists.

Citations name a numbered section (``## N. Title``) of the document in the repository, never a
document outside it (the old "DESIGN §N").
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
CITATION = re.compile(r"architecture\.md\s*§\s*(\d+)")
OUTSIDE = re.compile(r"\bDESIGN(?:\.md)?\s*§")
SKIP_DIRS = {".git", ".venv", "venv", "instance", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}
TEXT = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".html", ".sh", ".yml", ".yaml", ".json", ""}


def sections(doc: str) -> list[int]:
    return [int(n) for n in re.findall(r"^## (\d+)\. \S", doc, flags=re.MULTILINE)]


def repository_texts() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix in TEXT or path.name == "Makefile"):
            found.append(path)
    return found


def citations(text: str) -> list[int]:
    return [int(n) for n in CITATION.findall(text)]


def test_the_document_numbers_its_sections_one_by_one():
    numbers = sections(DOC.read_text(encoding="utf-8"))
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8


def test_every_citation_points_to_an_existing_section():
    existing = set(sections(DOC.read_text(encoding="utf-8")))
    cited, outside = {}, []
    for path in repository_texts():
        if path == Path(__file__).resolve():  # its own examples below
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT).as_posix()
        for number in citations(text):
            cited.setdefault(number, []).append(rel)
        if OUTSIDE.search(text):
            outside.append(rel)
    assert cited, "the code cites the document; a scan that finds nothing is broken"
    missing = {n: files for n, files in cited.items() if n not in existing}
    assert not missing, f"citations of sections that do not exist: {missing}"
    assert not outside, f"cite docs/architecture.md §N, not a design document outside the repository: {outside}"


def test_the_checks_see_what_they_should():
    assert citations("see docs/architecture.md §4 and architecture.md §12") == [4, 12]
    assert sections("# T\n\n## 1. One\n\n## 2. Two\n### 2.1 not a section\n") == [1, 2]
    assert OUTSIDE.search("(DESIGN §4)") and not OUTSIDE.search("the design note")


# -- docs/wechat-rules.md: the WeChat rules the code follows, cited by number ------------------------

RULES_DOC = ROOT / "docs" / "wechat-rules.md"
RULES_CITATION = re.compile(r"wechat-rules\.md\)?\s*§\s*(\d+(?:\.\d+)?)")
REFERENCE_OUTSIDE = re.compile(r"\breference\s*§|\bthe reference(?:'s)?\b", re.IGNORECASE)


def rules_sections(doc: str) -> set[str]:
    return set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?)\s", doc, flags=re.MULTILINE))


def test_every_wechat_rules_citation_points_to_an_existing_section():
    existing = rules_sections(RULES_DOC.read_text(encoding="utf-8"))
    cited, outside = {}, []
    for path in repository_texts():
        if path in (Path(__file__).resolve(), RULES_DOC):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT).as_posix()
        for number in RULES_CITATION.findall(text):
            cited.setdefault(number, []).append(rel)
        if path.suffix == ".py" and REFERENCE_OUTSIDE.search(text):
            outside.append(rel)
    assert cited, "the code cites the WeChat rules; a scan that finds nothing is broken"
    missing = {n: files for n, files in cited.items() if n not in existing}
    assert not missing, f"citations of WeChat-rule sections that do not exist: {missing}"
    assert not outside, f"cite docs/wechat-rules.md §N, not a reference outside the repository: {outside}"


def test_the_wechat_rules_checks_see_what_they_should():
    assert RULES_CITATION.findall("(docs/wechat-rules.md §6.3) and [x](docs/wechat-rules.md) §6") == ["6.3", "6"]
    assert rules_sections("## §1 One\n### §6.1 Two\n#### §9 no\n") == {"1", "6.1"}
    assert REFERENCE_OUTSIDE.search("(reference §6.1)") and REFERENCE_OUTSIDE.search("The reference's answer")
    assert not REFERENCE_OUTSIDE.search("the source reference")
