"""The directory people locust's users log in as."""

from __future__ import annotations

from typing import Any

# Locust's users log in as this many directory people of each kind (spike.py seeds them:
# the gateway trusts the directory, not the token); more users share a person.
PEOPLE = 64


def directory_people(tenant: str) -> dict[str, Any]:
    """The directory file (`python -m dynamo.directory import`) of locust's people."""
    kinds = (
        ("lt-rad", "Load Radiologist", "radiologist"),
        ("lt-coord", "Load Coordinator", "coordinator"),
        ("lt-flaky", "Load Flaky", "radiologist"),
    )
    return {
        "people": [
            {"tenant": tenant, "sub": f"{prefix}-{i}", "name": f"{name} {i}", "roles": [role]}
            for prefix, name, role in kinds
            for i in range(PEOPLE)
        ]
    }
