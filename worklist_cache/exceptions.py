"""Errors of the worklist cache.

CacheError              root of every error this package raises
├── OutOfScope          a view asks for sites, subspecialties or modalities its user
│                       may not read
└── RebuildIncomplete   a rebuild could not be marked built (Redis restarted under
                        it, again and again)
"""

from __future__ import annotations


class CacheError(Exception):
    """Root of the cache's errors."""


class OutOfScope(CacheError):
    """A view asks for sites, subspecialties or modalities its user may not read."""


class RebuildIncomplete(CacheError):
    """A rebuild could not be marked built (Redis restarted under it, again and again)."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"the rebuild of {tenant} did not complete")
        self.tenant = tenant
