"""The identity of the Kafka topic the job reads: its topic id, which a deleted and recreated topic of the same name
does not share. Spark's Kafka source does not expose it, and offsets alone cannot tell a recreated topic that grew
past the old one's offsets from the old topic, so the sink asks the broker (spark/sinks/postgres.py)."""

from __future__ import annotations

import threading


class TopicIds:
    """Looks up a topic's id with one admin client, made on first use and again after a failure."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._admin = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        from kafka.admin import KafkaAdminClient

        with self._lock:
            if self._admin is None:
                self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streaming-job-topic-ids",
                                               request_timeout_ms=20_000)
            try:
                described, = self._admin.describe_topics([self.topic])
            except Exception:
                # A broker outage: the batch fails (and is replayed); the next call connects again.
                self._admin.close()
                self._admin = None
                raise
        if described["error_code"]:
            raise LookupError(f"Kafka topic {self.topic!r}: describe_topics error code {described['error_code']}")
        return str(described["topic_id"])

    def close(self) -> None:
        with self._lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None
