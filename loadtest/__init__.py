"""Load: the radiology-day simulator (and later locust scenarios and the benchmark)."""
