from __future__ import annotations

import sys

from dynamo.directory.cli import main

sys.exit(main())
