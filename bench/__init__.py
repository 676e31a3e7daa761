"""Benchmarks of the dispatcher; ``python -m bench --help``."""
