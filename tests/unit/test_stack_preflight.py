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
