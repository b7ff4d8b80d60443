"""The streaming job's command line: every setting parsed, every bad one refused at start-up by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark.streaming_job import JobConfig, parse_args


def test_defaults_and_derived_settings(tmp_path):
    config = parse_args(["--checkpoint-root", str(tmp_path)])
    assert config == JobConfig(checkpoint_root=tmp_path)
    assert config.checkpoint_location == tmp_path / "eventos_to_warehouse"
    assert config.trigger_options() == {"processingTime": "30 seconds"}
    assert config.starting_offsets == "earliest" and config.min_batches_to_retain == 100


def test_every_option_is_read(tmp_path):
    config = parse_args([
        "--checkpoint-root", str(tmp_path), "--query-name", "q-1", "--trigger", "available-now",
        "--max-offsets-per-trigger", "10", "--starting-offsets", '{"t": {"0": 5}}', "--topic", "t",
        "--pg-schema", "test_abc", "--es-index-prefix", "test_abc", "--max-payload-bytes", "99",
        "--min-batches-to-retain", "7", "--max-version-skew-seconds", "0",
    ])
    assert config == JobConfig(
        checkpoint_root=tmp_path, query_name="q-1", trigger="available-now", max_offsets_per_trigger=10,
        starting_offsets='{"t": {"0": 5}}', topic="t", pg_schema="test_abc", es_index_prefix="test_abc",
        max_payload_bytes=99, min_batches_to_retain=7, max_version_skew_seconds=0,
    )
    assert config.trigger_options() == {"availableNow": True}
    assert parse_args(["--checkpoint-root", "c", "--trigger", "processing-time=500 milliseconds"]).trigger_options() \
        == {"processingTime": "500 milliseconds"}


def test_the_byte_budget_lowers_the_offsets_per_trigger(tmp_path):
    config = JobConfig(checkpoint_root=tmp_path, max_offsets_per_trigger=50_000, max_payload_bytes=256 * 1024,
                       max_bytes_per_trigger=1024 ** 3)
    assert config.offsets_per_trigger == 4_096  # 1 GB of messages of the largest accepted size
    assert parse_args(["--checkpoint-root", "c", "--max-bytes-per-trigger", "1000000000000"]).offsets_per_trigger \
        == 50_000
    assert parse_args(["--checkpoint-root", "c", "--max-bytes-per-trigger", "1", "--max-payload-bytes", "10"]) \
        .offsets_per_trigger == 1


@pytest.mark.parametrize("arguments, named", [
    ([], "--checkpoint-root"),
    (["--trigger", "every minute"], "--trigger"),
    (["--trigger", "processing-time=soon"], "--trigger"),
    (["--trigger", "processing-time=10 fortnights"], "--trigger"),
    (["--max-offsets-per-trigger", "0"], "--max-offsets-per-trigger"),
    (["--max-payload-bytes", "-1"], "--max-payload-bytes"),
    (["--max-bytes-per-trigger", "0"], "--max-bytes-per-trigger"),
    (["--min-batches-to-retain", "0"], "--min-batches-to-retain"),
    (["--max-version-skew-seconds", "-1"], "--max-version-skew-seconds"),
    (["--starting-offsets", "yesterday"], "--starting-offsets"),
    (["--query-name", "../escape"], "--query-name"),
    (["--pg-schema", "Robert'); DROP"], "--pg-schema"),
    (["--es-index-prefix", "UPPER"], "--es-index-prefix"),
])
def test_bad_settings_stop_at_start_up_naming_the_setting(capsys, arguments, named):
    root = [] if not arguments else ["--checkpoint-root", str(Path("checkpoints"))]
    with pytest.raises(SystemExit) as stopped:
        parse_args(root + arguments)
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err


def test_the_supervised_job_gets_the_version_skew_setting(tmp_path):
    from include.contract import DEFAULT_MAX_VERSION_SKEW_SECONDS
    from include.orchestration.config import StreamOpsConfig, job_arguments
    from include.settings import SettingsError

    environ = {"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PASSWORD": "unused",
               "PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS": "42"}
    arguments = job_arguments(StreamOpsConfig.load(environ), available_now=True)
    assert parse_args(arguments).max_version_skew_seconds == 42
    # The default is the job's own: not passed, so releases built before the option still accept the command line.
    default = job_arguments(StreamOpsConfig.load({**environ, "PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS": ""}), True)
    assert "--max-version-skew-seconds" not in default
    assert parse_args(default).max_version_skew_seconds == DEFAULT_MAX_VERSION_SKEW_SECONDS
    with pytest.raises(SettingsError, match="PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS"):
        StreamOpsConfig.load({**environ, "PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS": "-5"})


@pytest.mark.parametrize("available_now", [True, False])
def test_the_supervisors_command_line_is_one_the_job_accepts(tmp_path, available_now):
    from include.orchestration.config import StreamOpsConfig, job_arguments

    environ = {"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PASSWORD": "unused",
               "PIPELINE_STREAM_QUERY_NAME": "q_1-b", "PIPELINE_STREAM_TRIGGER_SECONDS": "7"}
    config = parse_args(job_arguments(StreamOpsConfig.load(environ), available_now=available_now)).validate()
    assert config.query_name == "q_1-b"
    assert config.trigger_options() == ({"availableNow": True} if available_now else {"processingTime": "7 seconds"})


@pytest.mark.parametrize("query_name", ["q.1", "..", "x" * 65])
def test_a_query_name_the_job_would_refuse_stops_the_orchestration_naming_the_setting(tmp_path, query_name):
    from include.orchestration.config import StreamOpsConfig
    from include.settings import SettingsError

    environ = {"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PASSWORD": "unused",
               "PIPELINE_STREAM_QUERY_NAME": query_name}
    with pytest.raises(SettingsError, match="PIPELINE_STREAM_QUERY_NAME"):
        StreamOpsConfig.load(environ)
    with pytest.raises(SystemExit):
        parse_args(["--checkpoint-root", str(tmp_path), "--query-name", query_name])


def test_the_supervised_job_gets_the_batch_byte_budget_setting(tmp_path):
    from include.contract import DEFAULT_MAX_BYTES_PER_TRIGGER
    from include.orchestration.config import StreamOpsConfig, job_arguments

    environ = {"PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_PG_PASSWORD": "unused",
               "PIPELINE_STREAM_MAX_BYTES_PER_TRIGGER": str(10_000 * 256 * 1024)}
    assert parse_args(job_arguments(StreamOpsConfig.load(environ), True)).offsets_per_trigger == 10_000
    default = job_arguments(StreamOpsConfig.load({**environ, "PIPELINE_STREAM_MAX_BYTES_PER_TRIGGER": ""}), True)
    assert "--max-bytes-per-trigger" not in default
    assert parse_args(default).max_bytes_per_trigger == DEFAULT_MAX_BYTES_PER_TRIGGER
