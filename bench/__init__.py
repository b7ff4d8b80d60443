"""Benchmarks of the pipeline on the local stack: `python -m bench` (see bench/__main__.py)."""
