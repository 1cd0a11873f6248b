"""The README's configuration table names every setting of every process."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from loadtest.settings import LoadtestSettings
from loadtest.simulator import SimSettings
from tests.support.settings import PACKAGES, settings_classes

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "settings",
    [
        *(c for p in PACKAGES for c in settings_classes(p)),
        SimSettings,
        LoadtestSettings,
    ],
    ids=lambda c: c.__name__,
)
def test_every_setting_is_in_the_readme(settings: type[BaseSettings]) -> None:
    prefix = str(settings.model_config.get("env_prefix", ""))
    missing = []
    for name, field in settings.model_fields.items():
        env = f"{prefix}{name}".upper()
        alias = field.validation_alias
        names = {env} | ({str(a).upper() for a in alias.choices} if alias else set())
        if not any(f"`{n}`" in README for n in names):
            missing.append(env)
    assert missing == [], f"add to the README's configuration table: {missing}"
