"""The publisher's pieces that need no broker: the partitioner, and how a page's acknowledgements are judged."""

from __future__ import annotations

import os
import uuid

import pytest
from kafka.errors import KafkaTimeoutError, NotEnoughReplicasError

from include.extract.publisher import InFlight, PublishError, key_partitions, murmur2


def test_murmur2_matches_kafka_python_and_the_java_client():
    from kafka.partitioner.default import murmur2 as reference

    # Keys of every length up to 80, mixed in one call as a page of them would be.
    keys = [os.urandom(length) for length in range(0, 80) for _ in range(3)]
    assert murmur2(keys).tolist() == [reference(key) for key in keys]
    # Values from the Java client's UtilsTest.testMurmur2 (signed ints there).
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
            b"a-little-bit-longer-string": -1486304829, b"abc": 479470107}
    assert murmur2(list(java)).tolist() == [expected & 0xFFFFFFFF for expected in java.values()]


def test_partitions_are_the_default_partitioners_choice():
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:
        def topics(self):
            return {"eventos"}

        def partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4}

        def available_partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4}

    keys = [str(uuid.uuid4()).encode() for _ in range(500)]
    default = DefaultPartitioner()
    assert key_partitions(keys, {4, 2, 0, 3, 1}) == [
        default.partition("eventos", None, key, None, b"", Cluster()) for key in keys]
    with pytest.raises(ValueError, match="no partitions"):
        key_partitions(keys, set())
    with pytest.raises(ValueError, match="carries its entity id as key"):
        key_partitions([keys[0], None], {0, 1})


class FakeFuture:
    """The part of kafka-python's FutureRecordMetadata that InFlight uses."""

    def __init__(self, error: Exception | None = None, settles: bool = True):
        self.error, self.settles = error, settles

    @property
    def is_done(self):
        return self.settles

    def succeeded(self):
        return self.settles and self.error is None

    def get(self, timeout=None):
        if not self.settles:
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.error:
            raise self.error
        return "metadata"


class Publisher:
    topic, bootstrap_servers, flush_timeout_s = "eventos", "127.0.0.1:19092", 0.05


def test_a_page_counts_only_when_every_message_is_acknowledged():
    assert InFlight(Publisher(), [FakeFuture() for _ in range(3)]).wait() == 3

    failed = InFlight(Publisher(), [FakeFuture(), FakeFuture(NotEnoughReplicasError("isr too small")), FakeFuture()])
    with pytest.raises(PublishError, match=r"1 of 3 messages to 'eventos' at 127.0.0.1:19092 were not acknowledged "
                                           r"\(NotEnoughReplicasError"):
        failed.wait()


def test_a_message_never_acknowledged_fails_the_page_after_the_timeout():
    in_flight = InFlight(Publisher(), [FakeFuture(), FakeFuture(settles=False)])
    assert not in_flight.done
    with pytest.raises(PublishError, match="1 of 2 messages .* KafkaTimeoutError"):
        in_flight.wait()
