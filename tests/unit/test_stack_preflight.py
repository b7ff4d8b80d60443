"""The stack explains what is wrong before it starts anything."""

from __future__ import annotations

import socket

import pytest

from include.settings import load_settings
from stack.services import Kafka, StackError, java_home


def test_missing_java_is_named(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match="Java 17 or newer is required"):
        java_home()


def test_taken_port_names_the_setting():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = load_settings({"PIPELINE_PG_PASSWORD": "x", "PIPELINE_KAFKA_PORT": str(port)})
        with pytest.raises(StackError, match=rf"port {port} \(PIPELINE_KAFKA_PORT\) is already taken"):
            Kafka(settings).check_port_free(settings.kafka_port, "PIPELINE_KAFKA_PORT")


def test_local_spark_cluster_is_opt_in_on_loopback_one_core_per_worker(tmp_path):
    from stack.services import SparkMaster, SparkWorker, all_services

    base = {"PIPELINE_PG_PASSWORD": "x", "PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_SPARK_MASTER_PORT": "27077",
            "PIPELINE_SPARK_WORKER_UI_PORT": "27081", "PIPELINE_SPARK_WORKERS": "3", "PIPELINE_SPARK_MASTER": "local[2]"}
    local = load_settings(base)
    assert not any(isinstance(s, (SparkMaster, SparkWorker)) for s in all_services(local))
    asked = [s.name for s in all_services(local, spark_cluster=True)][-4:]
    assert asked == ["spark-master", "spark-worker-0", "spark-worker-1", "spark-worker-2"]
    # Pointing the pipeline at the cluster's URL enables it without the flag.
    cluster = load_settings({**base, "PIPELINE_SPARK_MASTER": "spark://127.0.0.1:27077"})
    services = all_services(cluster)
    assert [s.name for s in services][-1] == "spark-worker-2"
    worker = services[-1]
    arguments = worker.arguments()
    assert arguments[0] == "spark://127.0.0.1:27077"
    assert arguments[arguments.index("--host") + 1] == "127.0.0.1"
    assert arguments[arguments.index("--cores") + 1] == "1"
    assert arguments[arguments.index("--webui-port") + 1] == "27083"
    assert arguments[arguments.index("--work-dir") + 1] == str(tmp_path / "spark-worker-2" / "work")


def test_worker_memory_is_a_spark_size():
    with pytest.raises(Exception, match="PIPELINE_SPARK_WORKER_MEMORY"):
        load_settings({"PIPELINE_PG_PASSWORD": "x", "PIPELINE_SPARK_WORKER_MEMORY": "lots"})


def test_stop_ends_the_children_a_service_leaves_behind(tmp_path):
    """A service that ignores SIGTERM is killed, and so is what it started (its process group, by its pid)."""
    import time

    from stack.services import Service, pid_alive

    class Stubborn(Service):
        name = "stubborn"
        stop_timeout = 1

    service = Stubborn(load_settings({"PIPELINE_PG_PASSWORD": "x", "PIPELINE_STATE_DIR": str(tmp_path)}))
    child_file = tmp_path / "child.pid"
    leader = service.spawn(["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {child_file}; wait"])
    deadline = time.monotonic() + 10
    while not (child_file.exists() and child_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(child_file.read_text())
    assert pid_alive(leader) and pid_alive(child)
    service.stop()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(leader) and not pid_alive(child)
    assert not service.pid_path.exists()
