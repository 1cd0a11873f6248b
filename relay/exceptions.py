"""Errors of the stream relay.

RelayError    root of every error this package raises
└── LeaseLost another relay owns the shard now; this one stops reading it
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of the relay's errors."""


class LeaseLost(RelayError):
    """Another relay owns the shard now; this one stops reading it."""
