from __future__ import annotations

from devstack.seed import SEED, render

SEED.write_text(render())
print(f"wrote {SEED}")
