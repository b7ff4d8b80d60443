"""`python -m bench`: the pipeline against the machine's limits, the naive path and the peer, on one data set.

    python -m bench                      # 200,000 events, every measurement (make bench)
    python -m bench --smoke              # a few thousand events, small latency run, no 1M backlog
    python -m bench --skip peer --skip backlog

Measurements run one after another on the local stack (`make up`), each in its own uuid-named Postgres schema,
Elasticsearch indices and Kafka topics, all removed at the end. Results: bench/results/<stem>.json and .png, and a
table on stdout. Every target is a ratio within this one run: the machine is shared and absolute numbers drift.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench import latency, limits, log_dir, naive, peer, pipeline, profile, report, start_logging
from bench.data import generate
from bench.monitor import Monitor, watch_services
from bench.scratch import Landed, Scratch
from include.settings import load_settings
from spark.streaming_job import JobConfig

log = logging.getLogger("bench")

MEASUREMENTS = ("limit-pg", "limit-es", "pipeline", "profile", "naive", "peer", "latency", "backlog")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events in the data set (default 200000)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick run: 3000 events, latency at 200/s for 10 s, no 1M backlog")
    parser.add_argument("--skip", action="append", default=[], choices=MEASUREMENTS, help="leave a measurement out")
    parser.add_argument("--seed", type=int, default=20251129, help="seed of the field values")
    parser.add_argument("--naive-sample", type=int, default=10_000, help="events the per-row writer gets")
    parser.add_argument("--latency-rate", type=int, default=1000, help="offered events/s")
    parser.add_argument("--latency-seconds", type=int, default=60)
    parser.add_argument("--trigger-interval", default="1 second", help="the latency run's processing-time trigger")
    parser.add_argument("--latency-settle", type=float, default=60,
                        help="seconds to wait after the last send for the events still not visible")
    parser.add_argument("--backlog-events", type=int, default=1_000_000)
    parser.add_argument("--max-offsets-per-trigger", type=int, default=JobConfig.max_offsets_per_trigger,
                        help="bound on each micro-batch in the backlog run (default: the job's, %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    parser.add_argument("--stem", help="file name (without extension) of the results; default: time and run id")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events = min(args.events, 3000)
        args.naive_sample = min(args.naive_sample, args.events)
        args.latency_rate, args.latency_seconds = min(args.latency_rate, 200), min(args.latency_seconds, 10)
        # The smoke run checks that every event lands, however slowly: wait long enough for a slow machine.
        args.latency_settle = max(args.latency_settle, 300)
        args.skip = sorted(set(args.skip) | {"backlog"})
    return args


def progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="ev", unit_scale=True, file=sys.stderr, leave=False)


def run(args: argparse.Namespace) -> tuple[dict, BaseException | None]:
    settings = load_settings()
    scratch = Scratch(settings)
    started_at = dt.datetime.now(dt.timezone.utc)
    logs = log_dir(settings)
    result: dict = {
        "run": {"id": scratch.run_id, "started_at": started_at.isoformat(timespec="seconds"),
                "command": " ".join(["python -m bench", *sys.argv[1:]]), "smoke": args.smoke,
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "spark_driver_memory": settings.spark_driver_memory, "skipped": args.skip},
        "measurements": {},
    }
    monitor = Monitor().start()
    failure: BaseException | None = None
    try:
        watch_services(monitor, settings)
        with progress(args.events, "generating") as bar:
            dataset = generate(args.events, args.seed, bar)
        result["dataset"] = dataset.summary()
        landed = Landed(settings, dataset.newest)
        measured = result["measurements"]
        steps = {
            "limit-pg": lambda: limits.limit_pg(settings, scratch, dataset, landed),
            "limit-es": lambda: limits.limit_es(scratch, dataset, sweep_sample=max(2000, len(dataset) // 10)),
            "pipeline": lambda: pipeline.measure(settings, scratch, dataset, landed, logs, monitor, progress),
            "profile": lambda: profile.measure(settings, scratch, dataset, logs, monitor),
            "naive": lambda: naive.measure(settings, scratch, dataset, args.naive_sample, logs, monitor),
            "peer": lambda: peer.measure(settings, scratch, dataset, landed, monitor=monitor),
            "latency": lambda: latency.measure(
                settings, scratch, dataset, pipeline.launcher(settings, scratch, logs, monitor),
                args.latency_rate, args.latency_seconds, args.trigger_interval, args.latency_settle),
            "backlog": lambda: pipeline.backlog(settings, scratch, args.backlog_events, args.seed,
                                                args.max_offsets_per_trigger, logs, monitor, progress),
        }
        try:
            for name in MEASUREMENTS:
                if name in args.skip:
                    continue
                log.info("measuring %s", name)
                began = time.perf_counter()
                measured[name.replace("-", "_")] = steps[name]()
                log.info("%s done in %.0f s", name, time.perf_counter() - began)
        finally:
            landed.close()
    except BaseException as error:  # recorded in the results, then re-raised by main()
        failure = error
        result["error"] = "".join(traceback.format_exception(error))
    finally:
        result["memory"] = monitor.stop()
        scratch.close()
    result["targets"] = report.targets(result["measurements"])
    result["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return result, failure


def main(argv: list[str] | None = None) -> int:
    start_logging()
    for chatty in ("kafka", "elastic_transport", "py4j", "include.schema"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = parse_args(argv)
    result, failure = run(args)
    stem = args.stem or f"{result['run']['started_at'].replace(':', '')}-{result['run']['id']}"
    json_path = report.write_json(result, args.results_dir, stem)
    if "dataset" in result:
        png_path = report.write_chart(result, args.results_dir, stem)
        print(report.table(result))
        print(f"\nresults: {json_path}\nchart:   {png_path}")
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
