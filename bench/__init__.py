"""Benchmarks of the pipeline on the local stack: `python -m bench` (see bench/__main__.py)."""

import logging
from pathlib import Path


def start_logging() -> None:
    """INFO to stderr, as every benchmark's command line logs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def log_dir(settings) -> Path:
    """Where a benchmark's drivers write their logs (.state/logs/bench), created on first use."""
    folder = settings.state_dir / "logs" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
