"""Errors of the gateway.

GatewayError              root of every error this package raises
├── ConfigurationError    the gateway cannot start as configured (says what to set)
├── AuthError             a token is refused; `code` is the wire error code
│                         (`unauthorized`, `token_expired`), `reason` never echoes it
└── TenantNotBuilt        a tenant's cache is being rebuilt: a snapshot would be
                          empty or old (the request is answered `unavailable`)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's errors."""


class ConfigurationError(GatewayError, RuntimeError):
    """The gateway cannot start as configured (the message says what to set)."""


class AuthError(GatewayError):
    """A token is refused."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # "unauthorized" | "token_expired"
        self.reason = reason


class TenantNotBuilt(GatewayError):
    """The tenant's cache is being rebuilt: its snapshot would be empty or old."""
