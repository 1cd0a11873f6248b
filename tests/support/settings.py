"""Every settings class of the production packages, found by walking their modules."""

from __future__ import annotations

import importlib
import pkgutil

from pydantic_settings import BaseSettings

# loadtest is left out: importing locust patches the interpreter (gevent); its settings
# classes are listed by hand where they are needed.
PACKAGES = (
    "audit",
    "dynamo",
    "gateway",
    "hl7_ingest",
    "orchestration",
    "relay",
    "service",
    "worklist_cache",
)


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
