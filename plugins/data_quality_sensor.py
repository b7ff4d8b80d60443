"""DataQualitySensor: waits until the warehouse, the search index and the stream agree, within thresholds.

Each poke gathers per-entity counts (Postgres rows, Elasticsearch documents, Supabase rows, dead letters in the
window), the query's heartbeat age and Kafka lag, and (unless `compare_content` is off) the drift: ids on which
Postgres differs from the source or Elasticsearch from Postgres (include/reconcile; hashed per id range, so a
poke over a million rows per entity takes a minute or two), and judges them with the pure `evaluate_quality`. The
report goes to XCom (key `dq_report`) and to the task log as a table. Data that is still catching up is poked
again; on timeout the task fails with the last report's reasons, not a bare "sensor timed out".
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from include.connections import ELASTICSEARCH_CONN_ID, KAFKA_CONN_ID, SUPABASE_DB_CONN_ID, WAREHOUSE_CONN_ID

REPORT_XCOM_KEY = "dq_report"


class DataQualitySensor(BaseSensorOperator):
    """Pass when the data-quality verdict passes.

    The query, its warehouse schema, index prefix and Supabase schema come from the configuration
    (include/orchestration/config.py) unless given here.

    :param query_name: streaming query whose heartbeat and checkpoint are checked
    :param entities: registry entity names to check (default: all)
    :param thresholds: overrides of the configured thresholds (QualityThresholds field names)
    :param compare_content: compare ids and versions across the stores, not only counts (gates on drift)
    """

    template_fields: Sequence[str] = ("query_name", "entities", "thresholds")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        query_name: str | None = None,
        entities: Sequence[str] | None = None,
        thresholds: dict[str, Any] | None = None,
        compare_content: bool = True,
        warehouse_conn_id: str = WAREHOUSE_CONN_ID,
        source_conn_id: str | None = SUPABASE_DB_CONN_ID,
        elasticsearch_conn_id: str = ELASTICSEARCH_CONN_ID,
        kafka_conn_id: str = KAFKA_CONN_ID,
        mode: str = "reschedule",
        **kwargs,
    ) -> None:
        super().__init__(mode=mode, **kwargs)
        self.query_name = query_name
        self.entities = entities
        self.thresholds = thresholds
        self.compare_content = compare_content
        self.warehouse_conn_id = warehouse_conn_id
        self.source_conn_id = source_conn_id
        self.elasticsearch_conn_id = elasticsearch_conn_id
        self.kafka_conn_id = kafka_conn_id
        self._last_summary: str | None = None

    def _report(self):
        from contextlib import ExitStack, closing

        from include.connections import elasticsearch_client, kafka_bootstrap, postgres_connection
        from include.entities import BY_NAME, ENTITIES
        from include.orchestration.config import StreamOpsConfig
        from include.orchestration.observe import gather_quality_counts
        from include.orchestration.quality import QualityThresholds, evaluate_quality

        config = StreamOpsConfig.load()
        thresholds = QualityThresholds.load(**(self.thresholds or {}))
        bootstrap = kafka_bootstrap(self.kafka_conn_id)
        with ExitStack() as stack:
            warehouse = stack.enter_context(closing(postgres_connection(self.warehouse_conn_id)))
            source = (stack.enter_context(closing(postgres_connection(self.source_conn_id)))
                      if self.source_conn_id else None)
            es = stack.enter_context(closing(elasticsearch_client(self.elasticsearch_conn_id)))
            query_name = self.query_name or config.query_name
            counts = gather_quality_counts(
                warehouse=warehouse, source=source, es=es, bootstrap=bootstrap, topic=config.settings.kafka_topic,
                checkpoint=config.checkpoint_root / query_name, query_name=query_name,
                window_minutes=thresholds.window_minutes, warehouse_schema=config.pg_schema,
                index_prefix=config.es_index_prefix, source_schema=config.source_schema,
                entities=[BY_NAME[name] for name in self.entities] if self.entities else ENTITIES,
                compare_content=self.compare_content,
            )
        return evaluate_quality(counts, thresholds)

    def poke(self, context) -> PokeReturnValue:
        report = self._report()
        self._last_summary = report.summary
        self.log.info("%s\n%s", report.summary, report.table)
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=report.as_dict())
        return PokeReturnValue(is_done=report.passed, xcom_value=report.as_dict())

    def execute(self, context) -> Any:
        try:
            return super().execute(context)
        except AirflowSensorTimeout as timeout:
            raise AirflowFailException(f"{self._last_summary} (still failing after {self.timeout:.0f} s)") from timeout
