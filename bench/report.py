"""The benchmark's outputs: targets as ratios within one run, a JSON file, a PNG chart and a printed table."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# (label in the table and chart, measurement key, events/s field, note)
THROUGHPUT_ROWS = (
    ("limit-pg", "limit_pg", "events_per_s", "COPY + upsert, no Spark"),
    ("limit-es", "limit_es", "events_per_s", "tuned bulk, no Spark"),
    ("pipeline", "pipeline", "events_per_s", "sum of micro-batch durations"),
    ("pipeline (wall)", "pipeline", "wall_events_per_s", "process start -> exit, incl. JVM start"),
    ("pipeline (pg)", "pipeline", "pg_visible_events_per_s", "process start -> last row visible in Postgres"),
    ("naive", "naive", "events_per_s", "per-row INSERT from foreachPartition"),
    ("peer", "peer", "events_per_s", "Kafka Connect + Debezium JDBC, start -> last row"),
)


def _rate(measurements: dict, key: str, field: str = "events_per_s") -> float | None:
    return (measurements.get(key) or {}).get(field)


def _target(name: str, value: float | None, threshold: float, higher_is_better: bool, unit: str,
            how: str) -> dict:
    met = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    return {"name": name, "value": None if value is None else round(value, 3), "threshold": threshold,
            "comparison": ">=" if higher_is_better else "<=", "unit": unit, "met": met, "how": how}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def targets(measurements: dict) -> list[dict]:
    pipeline = _rate(measurements, "pipeline")
    pipeline_pg = _rate(measurements, "pipeline", "pg_visible_events_per_s")
    limits = [r for r in (_rate(measurements, "limit_pg"), _rate(measurements, "limit_es")) if r]
    latency = measurements.get("latency") or {}
    backlog = measurements.get("backlog") or {}
    return [
        _target("pipeline / min(limit-pg, limit-es)", _ratio(pipeline, min(limits) if len(limits) == 2 else None),
                0.8, True, "x", "steady pipeline rate over the slower sink's limit"),
        _target("pipeline / naive", _ratio(pipeline, _rate(measurements, "naive")), 20, True, "x",
                "steady pipeline rate over the per-row rate (naive measured on a sample)"),
        _target("pipeline / peer", _ratio(pipeline_pg, _rate(measurements, "peer")), 1.0, True, "x",
                "both timed from process start to the last row visible in Postgres"),
        _target("p99 produce -> visible in Postgres", latency.get("p99_ms"), 3000, False, "ms",
                f"offered {latency.get('offered_per_s', '?')} events/s for {latency.get('duration_s', '?')} s"),
        _target("driver heap with a backlog", backlog.get("peak_heap_used_mb"), 2048, False, "MB",
                f"{backlog.get('events', '?')} events backlog, maxOffsetsPerTrigger "
                f"{backlog.get('max_offsets_per_trigger', '?')}"),
    ]


def write_json(result: dict, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    temporary.replace(path)  # a reader never sees half a file
    return path


def write_chart(result: dict, directory: Path, stem: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    measurements = result["measurements"]
    rows = [(label, _rate(measurements, key, field)) for label, key, field, _ in THROUGHPUT_ROWS]
    rows = [(label, rate) for label, rate in rows if rate]
    latency = measurements.get("latency") or {}
    percentiles = [(name, latency[f"{name}_ms"]) for name in ("p50", "p90", "p99", "max") if f"{name}_ms" in latency]

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    if rows:
        bars = left.barh([label for label, _ in rows], [rate for _, rate in rows], color="#4C72B0")
        left.bar_label(bars, labels=[f"{rate:,.0f}" for _, rate in rows], padding=3)
        left.invert_yaxis()
        left.set_xscale("log")  # the rates span orders of magnitude (per-row writes to bulk loads)
    else:
        left.text(0.5, 0.5, "throughput not measured", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("events/s, log scale (higher is better)")
    left.set_title(f"Throughput, {result['dataset']['events']:,} events of ~1 KB")
    if percentiles:
        bars = right.bar([name for name, _ in percentiles], [ms for _, ms in percentiles], color="#55A868")
        # An event still not visible when the run ended counts with its wait so far: such a percentile is a floor.
        right.bar_label(bars, padding=3, labels=[
            f"{'≥' if name in latency['lower_bounds'] else ''}{ms:,.0f}" for name, ms in percentiles])
        right.axhline(3000, color="#C44E52", linestyle="--", label="p99 target 3 s")
        right.legend(loc="lower right")
        right.set_title(f"Produce -> visible in Postgres at {latency['offered_per_s']:,} events/s")
    else:
        right.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=right.transAxes)
    right.set_ylabel("ms (lower is better)")
    figure.suptitle(f"bench run {result['run']['id']} ({result['run']['started_at']})")
    figure.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.png"
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def table(result: dict) -> str:
    measurements = result["measurements"]
    pipeline = _rate(measurements, "pipeline")
    lines = [f"{'measurement':<17} {'events':>9} {'seconds':>9} {'events/s':>10} {'pipeline ÷':>11}  note"]
    for label, key, field, note in THROUGHPUT_ROWS:
        measurement = measurements.get(key)
        if not measurement:
            lines.append(f"{label:<17} {'-':>9} {'-':>9} {'-':>10} {'-':>11}  not measured")
            continue
        rate = measurement[field]
        seconds = {"wall_events_per_s": measurement.get("wall_s"),
                   "pg_visible_events_per_s": measurement.get("pg_visible_s")}.get(field, measurement["seconds"])
        if measurement.get("sampled_from"):
            note = f"{note}; sample of {measurement['events']:,} of {measurement['sampled_from']:,}"
        ratio = f"{pipeline / rate:.3g}" if pipeline and rate and key != "pipeline" else ""
        lines.append(f"{label:<17} {measurement['events']:>9,} {seconds:>9.1f} {rate:>10,.0f} {ratio:>11}  {note}")
    latency = measurements.get("latency")
    if latency:
        shown = ", ".join(f"{name} {'>= ' if name in latency['lower_bounds'] else ''}{latency[f'{name}_ms']:,.0f} ms"
                          for name in ("p50", "p99", "max"))
        lines.append(f"latency at {latency['offered_per_s']:,}/s for {latency['duration_s']} s: {shown} "
                     f"({latency['visible']:,}/{latency['produced']:,} visible within {latency['settle_s']} s "
                     f"of the last send)")
    breakdown = measurements.get("profile")
    if breakdown:
        lines.append(f"one batch of {breakdown['events']:,} events took {breakdown['batch_s']:.1f} s: "
                     f"validate (probe) {breakdown['validate_probe_s']:.1f} s; stage {breakdown['stage_s']:.1f} s "
                     f"(validation + COPY), merge {breakdown['merge_s']:.1f} s, "
                     f"bulk {breakdown['bulk_s']:.1f} s (beside the merge)")
    lines.append("")
    lines.append(f"{'target':<38} {'value':>10} {'needed':>10}  result")
    for target in result["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:,.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"{target['name']:<38} {value:>10} {target['comparison']}{target['threshold']:>8,} {target['unit']:<2}"
                     f" {verdict}")
    memory = result.get("memory") or {}
    if memory:
        lines.append("")
        lines.append(f"{'process (tree)':<26} {'peak RSS MB':>12} {'peak PSS MB':>12}")
        for name, peak in memory.items():
            lines.append(f"{name:<26} {peak['peak_rss_mb']:>12,.0f} {peak['peak_pss_mb']:>12,.0f}")
    return "\n".join(lines)
