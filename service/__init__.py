"""Process plumbing every entry point shares: JSON logs and signal-driven shutdown."""

from __future__ import annotations

from service.logs import configure_logging
from service.runner import run_until_signalled

__all__ = ["configure_logging", "run_until_signalled"]
