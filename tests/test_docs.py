"""The docs a user configures from stay true to the code: every setting is in README.md and .env.example."""

from pathlib import Path

import pytest

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = [f"FUSIONQ_{name.upper()}" for name in Settings.model_fields]


@pytest.mark.parametrize("variable", VARIABLES)
def test_every_setting_is_documented(variable):
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    stem = variable.removesuffix("_OUT_PER_MTOK")  # the README's table shares one row for both prices
    assert f"| `{variable}`" in readme or (variable != stem and f"| `{stem}" in readme), \
        f"{variable} has no row in README.md's settings table"
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
