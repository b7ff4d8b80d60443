"""The streaming job alone: N mixed ~1 KB events, one available-now run into both sinks, events/s.

    python -m bench.stream_bench                 # 200,000 events
    python -m bench.stream_bench --events 20000

The full comparison (limits, naive writer, peer, latency) is `python -m bench`; this runs only its pipeline
measurement, on the same generated data (bench.data) and the same uuid-named topic, schema, indices and checkpoint
(bench.scratch), all removed at the end. It prints the processing rate (from the job's heartbeats: batch time
only) and the wall rate (process start to exit, JVM start-up included), and fails if a sink did not end with the
newest version of every id.
"""

from __future__ import annotations

import argparse
import sys

from bench import log_dir, pipeline, start_logging
from bench.data import generate
from bench.monitor import Monitor
from bench.scratch import Landed, Scratch
from include.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20251129)
    args = parser.parse_args(argv)
    start_logging()
    settings = load_settings()
    logs = log_dir(settings)
    monitor = Monitor().start()
    try:
        with Scratch(settings) as scratch:
            dataset = generate(args.events, args.seed)
            landed = Landed(settings, dataset.newest)
            try:
                result = pipeline.measure(settings, scratch, dataset, landed, logs, monitor, _no_progress)
            finally:
                landed.close()
    finally:
        monitor.stop()
    complete = result["landed_pg"]["complete"] and result["landed_es"]["complete"]
    print(f"{result['events']} events ({dataset.bytes_total / len(dataset):.0f} B average) in "
          f"{result['batches']} batches: {result['events_per_s']:.0f} events/s processing "
          f"({result['seconds']:.1f} s), {result['wall_events_per_s']:.0f} events/s wall ({result['wall_s']:.1f} s); "
          f"sinks {'complete' if complete else 'INCOMPLETE'}")
    return 0 if complete else 1


class _no_progress:
    """pipeline.measure reports progress through a tqdm-like context manager; this run prints none."""

    def __init__(self, total: int, description: str):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, count: int = 1) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
