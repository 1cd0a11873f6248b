"""`python -m relay`: the relay worker."""

from __future__ import annotations

from relay.worker import main

main()
