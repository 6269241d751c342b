"""The docs a user configures from stay true to the code: every setting is in README.md and .env.example."""

from pathlib import Path

import pytest

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = [f"FUSIONQ_{name.upper()}" for name in Settings.model_fields]


def _table_variables(readme: str) -> set[str]:
    """Variables named by the README's settings rows; ``| `FUSIONQ_A_X` / `_Y` |`` names A_X and A_Y."""
    named = set()
    for line in readme.splitlines():
        if not line.startswith("| `FUSIONQ_"):
            continue
        first, *others = [part.strip(" `") for part in line.split("|")[1].split("/")]
        named.add(first)
        for suffix in others:  # `_COOLDOWN` replaces the last words of the first name, as many as it has
            words = suffix.strip("_").split("_")
            named.add("_".join(first.split("_")[: -len(words)] + words))
    return named


@pytest.mark.parametrize("variable", VARIABLES)
def test_every_setting_is_documented(variable):
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    assert variable in _table_variables(readme), f"{variable} has no row in README.md's settings table"
    assert f"# {variable}=" in example, f"{variable} not in .env.example"


def test_the_env_example_shows_the_defaults():
    defaults = Settings.model_fields
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.startswith("# FUSIONQ_"):
            continue
        variable, value = line[2:].split("#")[0].strip().split("=", 1)
        field = defaults[variable.removeprefix("FUSIONQ_").lower()]
        if field.default is not None and not isinstance(field.default, Path):
            assert str(field.default) in (value, value.replace("_", "")) or float(value) == field.default, \
                f"{variable}: .env.example says {value}, the default is {field.default}"
