"""The driver's JVM heap when the messages are large: N leads of about S bytes each, one available-now run of the
streaming job (its defaults: batches bounded by the byte budget, Arrow batches bounded in bytes) into both sinks.

    python -m bench.heap_bench                          # 50,000 messages of 200 KB (10 GB)
    python -m bench.heap_bench --events 2000 --message-bytes 200000

Prints (and writes to bench/results/heap-<events>x<bytes>.json) the driver's peak heap used and committed (jstat,
bench.monitor.HeapSampler), its batches and seconds, and the rows that landed; fails if a lead is missing from
Postgres. Topic, schema, indices and checkpoint are uuid-named and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

from bench import log_dir, pipeline, start_logging
from bench.monitor import Monitor
from bench.scratch import Scratch, produce
from include.connections import warehouse_session
from include.contract import encode, message_key, record_message
from include.entities import LEAD
from include.schema import quote_ident
from include.settings import load_settings
from tests.stream_support import lead_message

RESULTS = Path(__file__).resolve().parent / "results"


def large_leads(events: int, message_bytes: int):
    """(key, value) of `events` distinct leads whose nome_projeto (text) makes each message about message_bytes."""
    base = lead_message()
    padding = message_bytes - len(encode(base))
    words = " ".join(f"palavra{n % 997}" for n in range(padding // 10 + 1))[:max(0, padding)]
    for _ in range(events):
        message = dict(base, id=str(uuid.uuid4()), nome_projeto=words)
        yield message_key(LEAD, message), encode(record_message(LEAD, message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heap_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--message-bytes", type=int, default=200_000)
    parser.add_argument("--timeout-s", type=float, default=7200)
    args = parser.parse_args(argv)
    start_logging()
    settings = load_settings()
    logs = log_dir(settings)
    monitor = Monitor().start()
    try:
        with Scratch(settings) as scratch:
            topic = scratch.topic("heap")
            # Small publish chunks: the producer side must not hold gigabytes either.
            produce(settings, topic, large_leads(args.events, args.message_bytes), chunk=200)
            schema, run, heap = pipeline.run_available_now(settings, scratch, "heap", topic, logs, monitor,
                                                           None, args.timeout_s)
            with warehouse_session(settings) as connection:
                rows = connection.execute(f"SELECT count(*) FROM {quote_ident(schema)}.leads").fetchone()[0]
                dead = connection.execute(f"SELECT count(*) FROM {quote_ident(schema)}.dead_letters").fetchone()[0]
    finally:
        monitor.stop()
    result = {"events": args.events, "message_bytes": args.message_bytes, "leads_in_postgres": rows,
              "dead_letters": dead, "batches": run["batches"], "seconds": round(run["seconds"], 1),
              "wall_s": run["wall_s"], "driver_heap": {k: v for k, v in heap.items() if k != "samples"},
              "command": f"python -m bench.heap_bench --events {args.events} --message-bytes {args.message_bytes}"}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"heap-{args.events}x{args.message_bytes}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if rows == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
