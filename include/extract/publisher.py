"""Publishing to Kafka with kafka-python: idempotent, acks=all, and every send checked.

`send` hands a page to the producer and returns an `InFlight`; its `wait` returns only once the broker has
acknowledged every message of the page, and raises otherwise, so the caller can tie "move the cursor" to
"the page is durable on the broker".
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

DEFAULT_PRODUCER_CONFIG = {
    # Pages arrive as bursts of thousands of messages: large batches and a short linger pay off.
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "max_request_size": 4 * 1024 * 1024,
    # Per-send metric sensors cost CPU on every message and nothing here reads them.
    "metrics_enabled": False,
    # A broker that is down fails the run after this long instead of the client's 30 s default.
    "bootstrap_timeout_ms": 10_000,
    "request_timeout_ms": 30_000,
    "delivery_timeout_ms": 60_000,
    # How long send() may block for metadata or buffer space before failing.
    "max_block_ms": 30_000,
}

# Bytes a record batch of one message adds to its key and value (a 61-byte batch header, the record's varints and
# attributes), rounded up: a value is refused when it plus its key plus this would exceed what the broker takes.
RECORD_OVERHEAD_BYTES = 512

UUID_KEY_BYTES = 36
_MASK = 0xFFFFFFFF
_M = np.uint32(0x5BD1E995)


def murmur2(keys: Sequence[bytes]) -> np.ndarray:
    """The Java client's murmur2 (Utils.murmur2) of each key, as kafka-python's, computed for a whole page at
    once: numpy runs each step over every key of one length together. kafka-python's byte-by-byte version
    costs about 13 us per uuid key, this about 0.5 us (most of it grouping the keys by length)."""
    hashes = np.empty(len(keys), dtype=np.uint32)
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        if key is None:
            raise ValueError("every message of the extraction carries its entity id as key")
        by_length[len(key)].append(index)
    for length, indexes in by_length.items():
        data = np.frombuffer(b"".join(keys[i] for i in indexes), dtype=np.uint8).reshape(len(indexes), length)
        h = np.full(len(indexes), (0x9747B28C ^ length) & _MASK, dtype=np.uint32)
        whole = length & ~3
        words = np.ascontiguousarray(data[:, :whole]).view("<u4")
        # uint32 arrays wrap on overflow, as the Java ints do.
        for column in range(whole // 4):
            k = words[:, column] * _M
            k ^= k >> 24
            k *= _M
            h *= _M
            h ^= k
        extra = length & 3
        if extra >= 3:
            h ^= data[:, whole + 2].astype(np.uint32) << 16
        if extra >= 2:
            h ^= data[:, whole + 1].astype(np.uint32) << 8
        if extra >= 1:
            h ^= data[:, whole]
            h *= _M
        h ^= h >> 13
        h *= _M
        h ^= h >> 15
        hashes[indexes] = h
    return hashes


def key_partitions(keys: Sequence[bytes], partitions: Iterable[int]) -> list[int]:
    """The default partitioner's choice for each keyed record (murmur2 of the key, as the Java client), so
    every version of a record lands in the partition any other Kafka producer would pick for its key."""
    ordered = sorted(partitions)
    if not ordered:
        raise ValueError("the topic has no partitions in the cluster metadata")
    return [ordered[i] for i in ((murmur2(keys) & 0x7FFFFFFF) % len(ordered)).tolist()]


class PublishError(RuntimeError):
    """Messages were not acknowledged by the broker; the cursor must not move past them."""


class BrokerUnavailable(PublishError):
    """No broker answered at the configured bootstrap address."""


class KafkaPublisher:
    def __init__(self, bootstrap_servers: str, topic: str, client_id: str = "supabase-extract",
                 flush_timeout_s: float = 120.0, **producer_config):
        if importlib.util.find_spec("crc32c") is None:
            # kafka-python falls back to a pure-Python CRC32C for every record batch: about 4x slower overall.
            log.warning("package crc32c is not installed: Kafka record checksums are computed in pure Python")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        config = DEFAULT_PRODUCER_CONFIG | producer_config
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id=client_id,
                # Idempotence with acks=all: broker-side retries cannot duplicate or reorder a key's messages.
                enable_idempotence=True,
                acks="all",
                **config,
            )
        except KafkaError as error:
            raise BrokerUnavailable(
                f"Kafka broker at {bootstrap_servers} is unreachable ({type(error).__name__}: {error}); "
                f"nothing was published to topic {topic!r} and no cursor moved"
            ) from error

    @functools.cached_property
    def max_value_bytes(self) -> int:
        """The largest value the broker accepts for this topic with a uuid key: the topic's `max.message.bytes`
        (the broker's `message.max.bytes` unless the topic overrides it) or the producer's `max_request_size`,
        whichever is smaller, less the record overhead."""
        from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="supabase-extract-limits")
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic, configs=["max.message.bytes"])],
                config_filter="all")
            topic_limit = int(described["topic"][self.topic]["max.message.bytes"]["value"])
        except (KafkaError, KeyError) as error:
            raise self._failure(error) from error
        finally:
            if admin is not None:
                admin.close()
        return min(topic_limit, self._producer.config["max_request_size"]) - RECORD_OVERHEAD_BYTES - UUID_KEY_BYTES

    def _failure(self, error: Exception) -> PublishError:
        return PublishError(f"publishing to {self.topic!r} at {self.bootstrap_servers} failed "
                            f"({type(error).__name__}: {error})")

    def send(self, messages: Iterable[tuple[bytes, bytes]]) -> InFlight:
        """Hand (key, value) pairs to the producer without waiting; the returned handle waits for the acks."""
        producer, topic, messages = self._producer, self.topic, list(messages)
        try:
            # Partitions chosen for the whole page at once: the producer's partitioner runs per message.
            partitions = key_partitions([key for key, _ in messages], producer.partitions_for(topic))
            return InFlight(self, [producer.send(topic, key=key, value=value, partition=partition)
                                   for (key, value), partition in zip(messages, partitions)])
        except KafkaError as error:
            raise self._failure(error) from error

    def flush(self) -> None:
        """Send whatever the producer still holds back for batching."""
        try:
            self._producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as error:
            raise self._failure(error) from error

    def publish(self, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Send and wait until the broker acknowledged every message. Returns the count."""
        in_flight = self.send(messages)
        self.flush()
        return in_flight.wait()

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> KafkaPublisher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class InFlight:
    """Messages handed to the producer; `wait` returns only when the broker acknowledged all of them."""

    def __init__(self, publisher: KafkaPublisher, futures: list):
        self.publisher = publisher
        self.futures = futures

    @property
    def done(self) -> bool:
        return all(future.is_done for future in self.futures)

    def wait(self) -> int:
        """Block until every message is acknowledged (returns the count); raise PublishError at the first that
        failed or when the flush timeout runs out."""
        publisher = self.publisher
        deadline = time.monotonic() + publisher.flush_timeout_s
        for future in self.futures:
            # Most are acknowledged by now: checked without get()'s timer, which costs more than the check.
            if future.succeeded():
                continue
            try:
                future.get(timeout=max(deadline - time.monotonic(), 0))
            except KafkaError as error:
                unacknowledged = sum(not f.succeeded() for f in self.futures)
                raise PublishError(
                    f"{unacknowledged} of {len(self.futures)} messages to {publisher.topic!r} at "
                    f"{publisher.bootstrap_servers} were not acknowledged ({type(error).__name__}: {error})"
                ) from error
        return len(self.futures)
