"""The README stays true: every configuration key and both commands are documented."""

from pathlib import Path

from config import SETTINGS

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_configuration_key_is_documented():
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in README]
    assert missing == []


def test_the_two_commands_are_documented():
    assert "make run" in README and "make test" in README


def test_the_configuration_table_is_generated_from_the_settings():
    from tests.readme_config import rewrite

    assert rewrite(README) == README, "run `python -m tests.readme_config` to refresh the README table"
