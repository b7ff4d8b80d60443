"""Command line for the reconciler: `python -m include.reconcile [--entity NAME ...] [--repair] ...`.

Prints one JSON report per entity (drift by kind per store, the repair plan, what was repaired) and the process's
peak RSS; exits 1 when any drift was found."""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys

from include.entities import ENTITIES
from include.reconcile.service import reconcile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.reconcile", description=__doc__)
    parser.add_argument("--entity", action="append", choices=[e.name for e in ENTITIES],
                        help="repeatable; default: every entity")
    parser.add_argument("--repair", action="store_true", help="repair what differs (default: a dry run)")
    parser.add_argument("--warehouse-schema", help="default: PIPELINE_STREAM_PG_SCHEMA")
    parser.add_argument("--source-schema", help="default: PIPELINE_DQ_SOURCE_SCHEMA")
    parser.add_argument("--index-prefix", help="default: PIPELINE_STREAM_ES_INDEX_PREFIX")
    parser.add_argument("--topic", help="where re-published rows go; default: PIPELINE_KAFKA_TOPIC")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    reports = reconcile(args.entity, dry_run=not args.repair, warehouse_schema=args.warehouse_schema,
                        source_schema=args.source_schema, index_prefix=args.index_prefix, topic=args.topic)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"entities": reports, "peak_rss_mb": round(peak_mb, 1)}, indent=2, default=str))
    return 1 if any(report["drift"] for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
