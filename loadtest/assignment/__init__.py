"""The assignment simulation: free picking against push orchestration on one day.

(model description: to be written)
"""

from __future__ import annotations

from loadtest.assignment.cli import main, simulate
from loadtest.assignment.day import Params, build_day
from loadtest.assignment.sim import MODES, run

__all__ = ["MODES", "Params", "build_day", "main", "run", "simulate"]
