"""The README's configuration table names every setting of the audit, and every settings
class of every production package is found (not only those listed by hand)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from audit.settings import AuditSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# loadtest is left out: importing locust patches the interpreter (gevent).
PACKAGES = ("audit", "dynamo", "gateway", "hl7_ingest", "service", "worklist_cache")


def settings_classes(package: str) -> list[type[BaseSettings]]:
    """Every BaseSettings subclass defined in a package's modules."""
    found: dict[str, type[BaseSettings]] = {}
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, f"{package}."):
        if info.name.endswith(("__main__", ".cli")):
            continue  # importing runs them
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value is not BaseSettings
                and value.__module__ == info.name
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_the_audit_settings_class_is_found() -> None:
    assert AuditSettings in settings_classes("audit")


@pytest.mark.parametrize(
    "settings", [c for p in PACKAGES for c in settings_classes(p)], ids=lambda c: c.__name__
)
def test_every_setting_is_in_the_readme(settings: type[BaseSettings]) -> None:
    prefix = str(settings.model_config.get("env_prefix", ""))
    missing = []
    for name, field in settings.model_fields.items():
        env = f"{prefix}{name}".upper()
        alias = field.validation_alias
        names = {env} | ({str(a).upper() for a in alias.choices} if alias else set())  # type: ignore[union-attr]
        if not any(f"`{n}`" in README for n in names):
            missing.append(env)
    assert missing == [], f"add to the README's configuration table: {missing}"


def test_the_architecture_doc_has_the_audit_trail() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "## Audit trail" in doc
    for table in ("exam_event", "exam", "reading", "review", "consumer_shard"):
        assert f"`{table}`" in doc
