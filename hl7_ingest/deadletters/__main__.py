"""`python -m hl7_ingest.deadletters`: see `cli`."""

from __future__ import annotations

import sys

from hl7_ingest.deadletters.cli import main

sys.exit(main())
