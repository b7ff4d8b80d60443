"""Command line for the extraction: `python -m include.extract {run,stats,inject} ...`."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging

from include.entities import EXTRACTED
from include.extract.config import ExtractConfig, parse_from_timestamp
from include.extract.service import Endpoints, get_supabase_stats, inject_event, run_cdc, run_extraction


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m include.extract", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="extract entities to Kafka from their cursors")
    run.add_argument("--entity", action="append", choices=[e.name for e in EXTRACTED],
                     help="repeatable; default: every extracted entity")
    run.add_argument("--from-timestamp", help="replay rows with updated_at >= this ISO time (with offset)")
    run.add_argument("--lookback-seconds", type=int, help="override PIPELINE_EXTRACT_LOOKBACK_SECONDS")
    run.add_argument("--page-size", type=int, help="override PIPELINE_EXTRACT_PAGE_SIZE")
    run.add_argument("--max-rows", type=int, help="stop each stream after this many rows")
    run.add_argument("--resnapshot", action="store_true",
                     help="cdc: drop the replication slot and start over with an initial snapshot")
    commands.add_parser("stats", help="row counts in the source")
    inject = commands.add_parser("inject", help="publish one generic event")
    inject.add_argument("evento")
    inject.add_argument("valor")
    inject.add_argument("usuario")
    for command in commands.choices.values():
        command.add_argument("--source-schema", default="public")
        command.add_argument("--warehouse-schema")
        command.add_argument("--topic")
        command.add_argument("--bootstrap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    endpoints = Endpoints(args.source_schema, args.warehouse_schema, args.topic, args.bootstrap)
    config = ExtractConfig.load()
    if args.command == "run" and config.source == "cdc":
        if args.page_size:
            config = dataclasses.replace(config, page_size=args.page_size)
        output = run_cdc(config=config, endpoints=endpoints, resnapshot=args.resnapshot).as_dict()
    elif args.command == "run":
        if args.page_size:
            config = dataclasses.replace(config, page_size=args.page_size)
        options = config.run_options(
            from_timestamp=parse_from_timestamp(args.from_timestamp),
            lookback=None if args.lookback_seconds is None else dt.timedelta(seconds=args.lookback_seconds),
            max_rows=args.max_rows,
        )
        output = [r.as_dict() for r in run_extraction(args.entity, options, config=config, endpoints=endpoints)]
    elif args.command == "stats":
        output = get_supabase_stats(config=config, endpoints=endpoints)
    else:
        output = inject_event(args.evento, args.valor, args.usuario, endpoints=endpoints)
    print(json.dumps(output, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
