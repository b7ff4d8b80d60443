from __future__ import annotations

import json

import pytest

from include.settings import SettingsError, load_settings

BASE = {"PIPELINE_PG_PASSWORD": "s3cret/with:odd@chars", "PIPELINE_STATE_DIR": "/nonexistent-state"}


def test_defaults_and_overrides():
    settings = load_settings({**BASE, "PIPELINE_KAFKA_PORT": "29092"})
    assert settings.kafka_bootstrap == "127.0.0.1:29092"
    assert settings.kafka_topic == "eventos"


def test_bad_value_names_the_setting():
    with pytest.raises(SettingsError, match="PIPELINE_KAFKA_PARTITIONS"):
        load_settings({**BASE, "PIPELINE_KAFKA_PARTITIONS": "three"})
    with pytest.raises(SettingsError, match="PIPELINE_ES_PORT"):
        load_settings({**BASE, "PIPELINE_ES_PORT": "70000"})


def test_missing_password_names_the_setting(monkeypatch, tmp_path):
    import include.settings as module

    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)  # no .env
    with pytest.raises(SettingsError, match="PIPELINE_PG_PASSWORD"):
        load_settings({"PIPELINE_STATE_DIR": str(tmp_path)})


def test_secrets_may_be_left_unset_only_on_request(monkeypatch, tmp_path):
    import include.settings as module

    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    settings = load_settings({"PIPELINE_STATE_DIR": str(tmp_path)}, require_secrets=False)
    assert settings.pg_password == "" and settings.pg_port == 54329
    with pytest.raises(SettingsError, match="PIPELINE_PG_PORT"):  # every other setting is still checked
        load_settings({"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PORT": "x"}, require_secrets=False)


def test_generated_file_is_read_and_environment_wins(monkeypatch, tmp_path):
    import include.settings as module

    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    (tmp_path / "generated.env").write_text("PIPELINE_PG_PASSWORD=from-file\nPIPELINE_PG_PORT=6000\n")
    settings = load_settings({"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PORT": "7000"})
    assert settings.pg_password == "from-file"
    assert settings.pg_port == 7000


def test_connections_are_complete_json_and_carry_the_timeout():
    settings = load_settings(BASE)
    connections = {name: json.loads(value) for name, value in settings.airflow_connections().items()}
    assert set(connections) == {"AIRFLOW_CONN_WAREHOUSE_POSTGRES", "AIRFLOW_CONN_SUPABASE_POSTGRES",
                                "AIRFLOW_CONN_SPARK_DEFAULT", "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT",
                                "AIRFLOW_CONN_KAFKA_DEFAULT"}
    warehouse = connections["AIRFLOW_CONN_WAREHOUSE_POSTGRES"]
    assert warehouse["password"] == BASE["PIPELINE_PG_PASSWORD"]
    assert "statement_timeout" in warehouse["extra"]["options"]
    assert "statement_timeout" in settings.pg_dsn("x")
    assert "s3cret%2Fwith%3Aodd%40chars" in settings.pg_dsn("x")
