"""Fixtures for tests that run the deployed entry points (Airflow DAGs, the MCP server) as subprocesses.

Those entry points take every name from the settings, so a test hands them databases, a topic, an index prefix
and a checkpoint root of its own through PIPELINE_* variables, and the real `public` objects stay untouched."""

from __future__ import annotations

import shutil

import pytest

from include.entities import ENTITIES
from include.schema import apply_sql, ensure_index, quote_ident, source_ddl, warehouse_ddl
from include.settings import REPO_ROOT
from tests.conftest import unique_name


@pytest.fixture
def isolated_stack(settings, pg_connect, es, es_prefix, kafka_topic):
    """PIPELINE_* overrides naming a warehouse and a source database (schema applied), a topic, an index prefix
    (indices created) and a checkpoint root, all owned by this test and removed afterwards."""
    admin = pg_connect("postgres", autocommit=True)
    databases = {"warehouse": unique_name("test_wh"), "source": unique_name("test_src")}
    checkpoints = settings.state_dir / "test-checkpoints" / es_prefix
    for database in databases.values():
        admin.execute(f"CREATE DATABASE {quote_ident(database)}")
    try:
        apply_sql(pg_connect(databases["warehouse"]), warehouse_ddl())
        apply_sql(pg_connect(databases["source"]), source_ddl())
        for entity in ENTITIES:
            ensure_index(es, entity, index=f"{es_prefix}_{entity.index}")
        yield {
            "PIPELINE_PG_WAREHOUSE_DB": databases["warehouse"],
            "PIPELINE_PG_SOURCE_DB": databases["source"],
            "PIPELINE_KAFKA_TOPIC": kafka_topic,
            "PIPELINE_STREAM_ES_INDEX_PREFIX": es_prefix,
            "PIPELINE_STREAM_CHECKPOINT_ROOT": str(checkpoints),
            "PYTHONPATH": str(REPO_ROOT),
        }
    finally:
        for database in databases.values():
            admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
        shutil.rmtree(checkpoints, ignore_errors=True)
