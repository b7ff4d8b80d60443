"""DataQualitySensor without services: each poke pushes the report and passes on the verdict; a timeout fails the
task with the last verdict's reasons instead of a bare "sensor timed out"."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.orchestration.quality import EntityCounts, QualityCounts, QualityThresholds, evaluate_quality

THRESHOLDS = QualityThresholds(max_sink_gap_pct=1.0, max_source_gap_pct=5.0, max_dead_letters=10,
                               window_minutes=60, max_heartbeat_age_seconds=120, max_kafka_lag=100)
AGREEING = evaluate_quality(QualityCounts((EntityCounts("lead", 100, 100, 100, 0),), 0, 5.0, 0), THRESHOLDS)
BEHIND = evaluate_quality(QualityCounts((EntityCounts("lead", 100, 80, 100, 0),), 0, 5.0, 0), THRESHOLDS)


class FakeTaskInstance:
    def __init__(self):
        self.pushed = []

    def xcom_push(self, key, value):
        self.pushed.append((key, value))


def _sensor(reports, **kwargs):
    from data_quality_sensor import DataQualitySensor

    class ScriptedSensor(DataQualitySensor):
        """The real sensor; each poke judges the next scripted report instead of gathering counts."""

        def _report(self):
            return reports.pop(0) if len(reports) > 1 else reports[0]

    return ScriptedSensor(task_id="dq", mode="poke", poke_interval=0.05, **kwargs)


def test_a_poke_pushes_the_report_and_passes_on_the_verdict():
    from data_quality_sensor import REPORT_XCOM_KEY

    ti = FakeTaskInstance()
    sensor = _sensor([BEHIND, AGREEING])
    first, second = sensor.poke({"ti": ti}), sensor.poke({"ti": ti})
    assert (first.is_done, second.is_done) == (False, True)
    assert [key for key, _ in ti.pushed] == [REPORT_XCOM_KEY, REPORT_XCOM_KEY]
    assert ti.pushed[0][1] == BEHIND.as_dict() and second.xcom_value == AGREEING.as_dict()


def test_a_timeout_fails_with_the_last_reasons():
    sensor = _sensor([BEHIND], timeout=0.3)
    with pytest.raises(AirflowFailException) as failure:
        sensor.execute({"ti": FakeTaskInstance()})
    message = str(failure.value)
    assert message.startswith("data quality FAILED: lead: Postgres has 100 rows but Elasticsearch 80 documents")
    assert "still failing after 0 s" in message
