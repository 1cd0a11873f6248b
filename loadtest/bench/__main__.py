"""`python -m loadtest.bench`: see the package's docstring."""

from __future__ import annotations

import sys

from loadtest.bench.cli import main

sys.exit(main())
