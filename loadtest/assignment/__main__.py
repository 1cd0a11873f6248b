"""`python -m loadtest.assignment`: see the package's docstring."""

from __future__ import annotations

import sys

from loadtest.assignment.cli import main

sys.exit(main())
