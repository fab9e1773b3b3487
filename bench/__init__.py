"""Benchmarks: each script prints human lines and one JSON line (run them as `python bench/NAME.py`)."""
