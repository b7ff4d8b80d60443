"""The data-quality verdict: a pure function over per-entity counts and thresholds from configuration.

Per entity: Postgres rows against Elasticsearch documents (the two sinks of one stream must agree), against the
source rows where there is a source (Supabase), and dead letters in the window; for the query: heartbeat
freshness, Kafka lag, and Kafka offsets it never read (lost_offsets, found in the window: any fails the verdict);
and, where the content was compared (include/reconcile), the drift per entity and store: ids one store lacks,
holds extra, or holds at another version than its reference. Gaps are allowed up to a percentage of the larger
count, rounded down, so on small tables any gap fails. A heartbeat is written per batch and Spark 4 reports nothing while a query is idle, so an
old heartbeat fails the check only while messages are waiting; a query that never reported fails it always.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

from include.contract import VALIDATOR_ERROR
from include.settings import SettingsError, load_settings, setting_name

# Each threshold is the setting PIPELINE_DQ_<FIELD> (include/settings.py).
SETTING_PREFIX = "dq_"
# Lost offset ranges named one by one in the verdict's reason; the rest are counted.
MAX_LOST_RANGES_SHOWN = 3


@dataclass(frozen=True)
class EntityCounts:
    entity: str
    postgres_rows: int
    es_docs: int
    # None for entities without a source table (events arrive on Kafka directly)
    source_rows: int | None
    dead_letters: int


@dataclass(frozen=True)
class LostOffsets:
    """A range of Kafka offsets the streaming job never read (table lost_offsets, spark/sinks/postgres.py)."""
    topic: str
    partition: int
    from_offset: int
    to_offset: int  # inclusive; below from_offset when a reset skipped none of the new topic's offsets
    reason: str  # 'skipped' (the broker no longer held them) or 'reset' (the offsets restarted lower)
    previous_offset: int  # the last offset merged before

    @property
    def offsets(self) -> int:
        return max(0, self.to_offset - self.from_offset + 1)

    def describe(self) -> str:
        where = f"topic {self.topic} partition {self.partition}"
        if self.reason == "reset":
            skipped = (f"; new offsets {self.from_offset}-{self.to_offset} were not read either" if self.offsets
                       else "")
            return (f"{where} restarted at offset {self.to_offset + 1} after {self.previous_offset} (topic "
                    f"recreated?): what the old topic held after offset {self.previous_offset} and the job had not "
                    f"read is lost{skipped}")
        return (f"{where} offsets {self.from_offset}-{self.to_offset} ({self.offsets}) were gone from the broker "
                "before the job read them (retention or deleted records)")


@dataclass(frozen=True)
class DriftCount:
    """Ids on which one store differs from its reference for one entity (include/reconcile)."""

    entity: str
    store: str  # postgres (against the source) or elasticsearch (against postgres)
    reference: str
    missing: int
    extra: int
    older: int
    newer: int
    different: int = 0  # content differs, order unknown (an entity ordered by source position, against the source)

    @property
    def total(self) -> int:
        return self.missing + self.extra + self.older + self.newer + self.different


@dataclass(frozen=True)
class QualityCounts:
    entities: tuple[EntityCounts, ...]
    # dead letters not attributable to an entity (unparseable JSON, unknown tipo_evento)
    unattributed_dead_letters: int
    heartbeat_age_seconds: float | None
    kafka_lag: int | None
    # reason class (the reason before ": <field>") -> dead letters of the window, every entity and none
    dead_letters_by_reason: Mapping[str, int] = field(default_factory=dict)
    # offset ranges found lost in the window, oldest first
    lost_offsets: tuple[LostOffsets, ...] = ()
    # None: the content was not compared (counts only)
    drift: tuple[DriftCount, ...] | None = None

    @property
    def validator_errors(self) -> int:
        """Messages the validator raised on: a bug, never a bad message, so counted apart from the others."""
        return self.dead_letters_by_reason.get(VALIDATOR_ERROR, 0)


@dataclass(frozen=True)
class QualityThresholds:
    max_sink_gap_pct: float = 0.1
    max_source_gap_pct: float = 1.0
    max_dead_letters: int = 100
    window_minutes: int = 60
    max_heartbeat_age_seconds: float = 300.0
    max_kafka_lag: int = 10_000
    max_drift: int = 0

    def __post_init__(self):
        for field_name, value in asdict(self).items():
            if value < 0:
                raise SettingsError(f"{setting_name(SETTING_PREFIX + field_name)}={value} must not be negative")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides) -> QualityThresholds:
        """From the settings (environment, `.env`), then explicit overrides (e.g. a sensor's arguments)."""
        settings = load_settings(environ, require_secrets=False)
        loaded = {name: getattr(settings, SETTING_PREFIX + name) for name in cls.__dataclass_fields__}
        loaded.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**loaded)


@dataclass(frozen=True)
class QualityReport:
    passed: bool
    reasons: tuple[str, ...]
    table: str
    counts: QualityCounts
    thresholds: QualityThresholds

    @property
    def summary(self) -> str:
        if self.passed:
            return "data quality PASSED"
        return "data quality FAILED: " + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "table": self.table,
                "counts": asdict(self.counts), "thresholds": asdict(self.thresholds)}


def _allowed_gap(pct: float, *counts: int) -> int:
    return math.floor(pct / 100 * max(counts))


def _entity_problems(row: EntityCounts, t: QualityThresholds) -> list[str]:
    problems = []
    gap = abs(row.postgres_rows - row.es_docs)
    if gap > _allowed_gap(t.max_sink_gap_pct, row.postgres_rows, row.es_docs):
        problems.append(f"{row.entity}: Postgres has {row.postgres_rows} rows but Elasticsearch {row.es_docs} "
                        f"documents (gap {gap} > {t.max_sink_gap_pct}%)")
    if row.source_rows is not None:
        gap = abs(row.source_rows - row.postgres_rows)
        if gap > _allowed_gap(t.max_source_gap_pct, row.source_rows, row.postgres_rows):
            problems.append(f"{row.entity}: source has {row.source_rows} rows but Postgres {row.postgres_rows} "
                            f"(gap {gap} > {t.max_source_gap_pct}%)")
    return problems


def _drift_problems(drift: DriftCount, t: QualityThresholds) -> list[str]:
    if drift.total <= t.max_drift:
        return []
    kinds = ", ".join(f"{getattr(drift, kind)} {kind}"
                      for kind in ("missing", "extra", "older", "newer", "different") if getattr(drift, kind))
    return [f"{drift.entity}: {_STORE_NAMES[drift.store]} differs from {_STORE_NAMES[drift.reference]} on "
            f"{drift.total} ids ({kinds}; more than {t.max_drift})"]


_STORE_NAMES = {"source": "the source", "postgres": "Postgres", "elasticsearch": "Elasticsearch"}


def _drift_cell(counts: QualityCounts, entity: str) -> str:
    if counts.drift is None:
        return "-"
    return str(sum(d.total for d in counts.drift if d.entity == entity))


def _table(counts: QualityCounts, flagged: set[str]) -> str:
    header = ("entity", "source", "postgres", "elasticsearch", "dead letters", "drift", "status")
    rows = [header] + [
        (r.entity, "-" if r.source_rows is None else str(r.source_rows), str(r.postgres_rows), str(r.es_docs),
         str(r.dead_letters), _drift_cell(counts, r.entity), "FAIL" if r.entity in flagged else "ok")
        for r in counts.entities
    ]
    rows.append(("(unattributed)", "-", "-", "-", str(counts.unattributed_dead_letters), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    age = counts.heartbeat_age_seconds
    lines.append(f"heartbeat age: {'none recorded' if age is None else f'{age:.0f} s'}; "
                 f"kafka lag: {'unknown' if counts.kafka_lag is None else counts.kafka_lag}; "
                 f"validator errors: {counts.validator_errors}; "
                 f"lost offsets: {sum(r.offsets for r in counts.lost_offsets)} in {len(counts.lost_offsets)} "
                 f"ranges; content {'not compared' if counts.drift is None else 'compared id by id'}")
    return "\n".join(lines)


def evaluate_quality(counts: QualityCounts, thresholds: QualityThresholds) -> QualityReport:
    reasons: list[str] = []
    flagged: set[str] = set()
    for row in counts.entities:
        problems = _entity_problems(row, thresholds)
        for drift in counts.drift or ():
            if drift.entity == row.entity:
                problems.extend(_drift_problems(drift, thresholds))
        if problems:
            flagged.add(row.entity)
            reasons.extend(problems)
    dead = sum(r.dead_letters for r in counts.entities) + counts.unattributed_dead_letters
    if dead > thresholds.max_dead_letters:
        reasons.append(f"{dead} dead letters in the last {thresholds.window_minutes} min "
                       f"(more than {thresholds.max_dead_letters})")
    if counts.validator_errors:
        reasons.append(f"{counts.validator_errors} dead letters with reason {VALIDATOR_ERROR}: the validator raised "
                       "on them (a bug to fix, then replay them from dead_letters)")
    if counts.lost_offsets:
        shown = MAX_LOST_RANGES_SHOWN
        listed = "; ".join(r.describe() for r in counts.lost_offsets[:shown])
        more = len(counts.lost_offsets) - shown
        reasons.append(f"{len(counts.lost_offsets)} Kafka offset ranges never read in the last "
                       f"{thresholds.window_minutes} min (lost_offsets): {listed}"
                       + (f"; and {more} more" if more > 0 else ""))
    age = counts.heartbeat_age_seconds
    if age is None:
        reasons.append("no heartbeat recorded for the streaming query")
    elif age > thresholds.max_heartbeat_age_seconds and (counts.kafka_lag or 0) > 0:
        reasons.append(f"last heartbeat {age:.0f} s ago (more than {thresholds.max_heartbeat_age_seconds:.0f} s) "
                       f"while {counts.kafka_lag} messages wait")
    if counts.kafka_lag is None:
        reasons.append("Kafka lag unknown: the query has not committed a batch")
    elif counts.kafka_lag > thresholds.max_kafka_lag:
        reasons.append(f"Kafka lag {counts.kafka_lag} (more than {thresholds.max_kafka_lag})")
    return QualityReport(not reasons, tuple(reasons), _table(counts, flagged), counts, thresholds)
