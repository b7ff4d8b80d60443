"""evaluate_quality: the verdict, its reasons and the table, for each threshold; thresholds from configuration."""

from __future__ import annotations

import dataclasses

import pytest

from include.orchestration.quality import (DriftCount, EntityCounts, LostOffsets, QualityCounts, QualityThresholds,
                                          evaluate_quality)
from include.settings import SettingsError

THRESHOLDS = QualityThresholds(max_sink_gap_pct=1.0, max_source_gap_pct=5.0, max_dead_letters=10,
                               window_minutes=60, max_heartbeat_age_seconds=120, max_kafka_lag=100)


def counts(lead=(100, 100, 100, 0), chat=(50, 50, 50, 0), evento=(20, 20, None, 0), unattributed=0,
           heartbeat_age=15.0, lag=0) -> QualityCounts:
    rows = tuple(EntityCounts(name, pg, es, source, dead) for name, (pg, es, source, dead)
                 in (("lead", lead), ("chat_session", chat), ("evento", evento)))
    return QualityCounts(rows, unattributed, heartbeat_age, lag)


def test_consistent_data_passes_with_a_readable_table():
    report = evaluate_quality(counts(), THRESHOLDS)
    assert report.passed and report.reasons == ()
    assert report.summary == "data quality PASSED"
    lines = report.table.splitlines()
    assert lines[0].split() == ["entity", "source", "postgres", "elasticsearch", "dead", "letters", "drift",
                                "status"]
    assert lines[2].split() == ["lead", "100", "100", "100", "0", "-", "ok"]
    assert lines[4].split() == ["evento", "-", "20", "20", "0", "-", "ok"]
    assert "heartbeat age: 15 s; kafka lag: 0" in lines[-1]
    assert lines[-1].endswith("content not compared")


def test_elasticsearch_missing_documents_fails_naming_the_entity():
    report = evaluate_quality(counts(lead=(100, 90, 100, 0)), THRESHOLDS)
    assert not report.passed
    assert report.reasons == ("lead: Postgres has 100 rows but Elasticsearch 90 documents (gap 10 > 1.0%)",)
    assert report.summary.startswith("data quality FAILED: lead: Postgres has 100 rows")
    lead_line = next(line for line in report.table.splitlines() if line.startswith("lead"))
    assert lead_line.split()[-1] == "FAIL"


def test_sink_gap_within_tolerance_passes_and_one_more_fails():
    # 1% of 1000 = 10 allowed
    assert evaluate_quality(counts(lead=(1000, 990, 1000, 0)), THRESHOLDS).passed
    assert not evaluate_quality(counts(lead=(1000, 989, 1000, 0)), THRESHOLDS).passed


def test_small_tables_allow_no_gap_at_all():
    assert not evaluate_quality(counts(evento=(20, 19, None, 0)), THRESHOLDS).passed


def test_more_documents_than_rows_is_also_a_gap():
    report = evaluate_quality(counts(chat=(50, 60, 50, 0)), THRESHOLDS)
    assert report.reasons == ("chat_session: Postgres has 50 rows but Elasticsearch 60 documents (gap 10 > 1.0%)",)


def test_source_gap():
    assert evaluate_quality(counts(lead=(95, 95, 100, 0)), THRESHOLDS).passed  # 5% of 100
    report = evaluate_quality(counts(lead=(94, 94, 100, 0)), THRESHOLDS)
    assert report.reasons == ("lead: source has 100 rows but Postgres 94 (gap 6 > 5.0%)",)


def test_dead_letters_are_summed_over_entities_and_unattributed():
    assert evaluate_quality(counts(lead=(100, 100, 100, 4), unattributed=6), THRESHOLDS).passed
    report = evaluate_quality(counts(lead=(100, 100, 100, 4), unattributed=7), THRESHOLDS)
    assert report.reasons == ("11 dead letters in the last 60 min (more than 10)",)


@pytest.mark.parametrize("age,lag,reasons", [
    (None, 0, ("no heartbeat recorded for the streaming query",)),
    (121.0, 3, ("last heartbeat 121 s ago (more than 120 s) while 3 messages wait",)),
    (120.0, 3, ()),
    (86400.0, 0, ()),  # idle: Spark reports no progress while there is nothing to do
])
def test_heartbeat_freshness(age, lag, reasons):
    assert evaluate_quality(counts(heartbeat_age=age, lag=lag), THRESHOLDS).reasons == reasons


@pytest.mark.parametrize("lag,reason", [
    (None, "Kafka lag unknown: the query has not committed a batch"),
    (101, "Kafka lag 101 (more than 100)"),
])
def test_kafka_lag(lag, reason):
    assert evaluate_quality(counts(lag=lag), THRESHOLDS).reasons == (reason,)


def test_validator_errors_are_counted_apart_and_fail_the_verdict_whatever_the_threshold():
    clean = evaluate_quality(dataclasses.replace(counts(lead=(100, 100, 100, 3)),
                                                 dead_letters_by_reason={"wrong_type": 3}), THRESHOLDS)
    assert clean.passed and clean.counts.validator_errors == 0
    assert "validator errors: 0" in clean.table.splitlines()[-1]
    report = evaluate_quality(dataclasses.replace(counts(unattributed=2),
                                                  dead_letters_by_reason={"validator_error": 2}), THRESHOLDS)
    assert report.counts.validator_errors == 2 and "validator errors: 2" in report.table.splitlines()[-1]
    assert report.reasons == ("2 dead letters with reason validator_error: the validator raised on them (a bug to "
                              "fix, then replay them from dead_letters)",)


def test_lost_offsets_fail_the_verdict_named_in_words_whatever_the_thresholds():
    skipped = LostOffsets("eventos", 1, 5, 9, "skipped", 4)
    reset = LostOffsets("eventos", 0, 0, -1, "reset", 11)
    reset_past_new = LostOffsets("eventos", 2, 0, 2, "reset", 7)
    report = evaluate_quality(dataclasses.replace(counts(), lost_offsets=(skipped, reset)), THRESHOLDS)
    assert not report.passed
    assert report.reasons == (
        "2 Kafka offset ranges never read in the last 60 min (lost_offsets): topic eventos partition 1 offsets 5-9 "
        "(5) were gone from the broker before the job read them (retention or deleted records); topic eventos "
        "partition 0 restarted at offset 0 after 11 (topic recreated?): what the old topic held after offset 11 and "
        "the job had not read is lost",)
    assert "lost offsets: 5 in 2 ranges" in report.table.splitlines()[-1]
    assert "new offsets 0-2 were not read either" in reset_past_new.describe()
    many = evaluate_quality(dataclasses.replace(counts(), lost_offsets=(skipped,) * 5), THRESHOLDS)
    assert many.reasons[0].startswith("5 Kafka offset ranges") and many.reasons[0].endswith("; and 2 more")


def test_every_problem_is_reported_at_once():
    report = evaluate_quality(counts(lead=(100, 0, 100, 0), unattributed=50, heartbeat_age=None, lag=500), THRESHOLDS)
    assert len(report.reasons) == 4
    assert report.as_dict()["passed"] is False and len(report.as_dict()["reasons"]) == 4


def test_thresholds_from_settings_and_overrides():
    environ = {"PIPELINE_PG_PASSWORD": "x", "PIPELINE_DQ_MAX_KAFKA_LAG": "7", "PIPELINE_DQ_MAX_SINK_GAP_PCT": "2.5"}
    loaded = QualityThresholds.load(environ, max_dead_letters=3)
    assert (loaded.max_kafka_lag, loaded.max_sink_gap_pct, loaded.max_dead_letters) == (7, 2.5, 3)
    assert loaded.window_minutes == QualityThresholds().window_minutes


@pytest.mark.parametrize("name,value", [("PIPELINE_DQ_MAX_KAFKA_LAG", "many"), ("PIPELINE_DQ_MAX_DEAD_LETTERS", "-1")])
def test_bad_threshold_settings_name_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        QualityThresholds.load({name: value})


def drift(entity="lead", store="elasticsearch", missing=0, extra=0, older=0, newer=0, different=0) -> DriftCount:
    reference = "source" if store == "postgres" else "postgres"
    return DriftCount(entity, store, reference, missing, extra, older, newer, different)


DRIFT_CASES = {
    # name: (drift, max_drift, expected reasons)
    "compared, none": ((drift(), drift(store="postgres")), 0, ()),
    "elasticsearch misses one id with equal counts elsewhere": (
        (drift(missing=1),), 0,
        ("lead: Elasticsearch differs from Postgres on 1 ids (1 missing; more than 0)",)),
    "every kind, named in words": (
        (drift(missing=1, extra=2, older=3, newer=4),), 0,
        ("lead: Elasticsearch differs from Postgres on 10 ids (1 missing, 2 extra, 3 older, 4 newer; more than 0)",)),
    "source newer than postgres": (
        (drift(store="postgres", older=2),), 0,
        ("lead: Postgres differs from the source on 2 ids (2 older; more than 0)",)),
    "sessions whose content differs from the source's (no version to say which is older)": (
        (drift(entity="chat_session", store="postgres", different=2, missing=1),), 0,
        ("chat_session: Postgres differs from the source on 3 ids (1 missing, 2 different; more than 0)",)),
    "at the allowed drift": ((drift(extra=3),), 3, ()),
    "one over the allowed drift": ((drift(extra=4),), 3,
                                   ("lead: Elasticsearch differs from Postgres on 4 ids (4 extra; more than 3)",)),
    "each store judged apart": (
        (drift(store="postgres", missing=1), drift(entity="evento", newer=1)), 0,
        ("lead: Postgres differs from the source on 1 ids (1 missing; more than 0)",
         "evento: Elasticsearch differs from Postgres on 1 ids (1 newer; more than 0)")),
}


@pytest.mark.parametrize("name", DRIFT_CASES)
def test_drift(name):
    drifts, max_drift, reasons = DRIFT_CASES[name]
    thresholds = dataclasses.replace(THRESHOLDS, max_drift=max_drift)
    report = evaluate_quality(dataclasses.replace(counts(), drift=drifts), thresholds)
    assert report.reasons == reasons
    assert report.passed is (not reasons)
    flagged = {line.split()[0] for line in report.table.splitlines()[2:5] if line.split()[-1] == "FAIL"}
    assert flagged == {r.split(":")[0] for r in reasons}
    assert report.table.splitlines()[-1].endswith("content compared id by id")


def test_drift_column_sums_the_stores_of_an_entity():
    report = evaluate_quality(dataclasses.replace(
        counts(), drift=(drift(store="postgres", older=2), drift(missing=1), drift(entity="chat_session"))),
        THRESHOLDS)
    lines = report.table.splitlines()
    assert lines[2].split()[-2:] == ["3", "FAIL"] and lines[3].split()[-2:] == ["0", "ok"]
    assert lines[4].split()[-2:] == ["0", "ok"]  # evento: compared, no drift recorded for it
