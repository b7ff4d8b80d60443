"""Latency: events offered at a fixed rate to the streaming job running with a processing-time trigger; for each,
the time from its send to the moment its version (or a newer one) is visible in Postgres.

Visibility is observed, not inferred: a trigger on each table of the run's own schema copies every row the sink
writes into `bench_seen`, and a poller takes the committed ones out every `poll_s` (DELETE ... RETURNING sees only
committed rows). An event's latency is the poll that first saw it minus its send time, so it overstates the true
value by at most one poll interval.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

from bench.data import Dataset, order_value
from bench.scratch import Scratch
from include.connections import warehouse_session
from include.entities import ENTITIES
from include.schema import quote_ident


SEEN_TABLE = "bench_seen"
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))


def visibility_ddl(schema: str) -> list[str]:
    seen = f"{quote_ident(schema)}.{quote_ident(SEEN_TABLE)}"
    # A row's order: its version, or its source position for an entity ordered by it (the other is null).
    statements = [f"CREATE TABLE {seen} (table_name text NOT NULL, id uuid NOT NULL, version timestamptz, "
                  "position text)"]
    for entity in ENTITIES:
        order = (f"NEW.{quote_ident(entity.version_column)}, NULL" if entity.version_column
                 else f"NULL, NEW.{quote_ident(entity.order_column)}")
        function = f"{quote_ident(schema)}.{quote_ident(f'{SEEN_TABLE}_{entity.table}')}"
        statements += [
            f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO {seen} VALUES (TG_TABLE_NAME, NEW.{quote_ident(entity.key)}, {order});
                    RETURN NULL;
                END $$""",
            f"CREATE TRIGGER {quote_ident(SEEN_TABLE)} AFTER INSERT OR UPDATE ON "
            f"{quote_ident(schema)}.{quote_ident(entity.table)} FOR EACH ROW EXECUTE FUNCTION {function}()",
        ]
    return statements


class Visibility:
    """Pending events by id; a poller thread marks them visible as their rows commit."""

    def __init__(self, settings, schema: str, poll_s: float = 0.1):
        self.connection = warehouse_session(settings, autocommit=True)
        self.schema = schema
        self.poll_s = poll_s
        self.by_table = {entity.table: entity for entity in ENTITIES}
        self.pending: dict[tuple[str, str], list[tuple[object, float]]] = {}  # (order_value, sent at)
        self.latencies_ms: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-visibility", daemon=True)
        self._thread.start()

    def sent(self, entity_name: str, record_id: str, version, at: float) -> None:
        """`version`: the message's order_value (bench/data.py)."""
        with self._lock:
            self.pending.setdefault((entity_name, record_id), []).append((version, at))

    def _seen(self, rows: list[tuple], at: float) -> None:
        with self._lock:
            for table, record_id, version, position in rows:
                version = position if version is None else version
                key = (self.by_table[table].name, str(record_id))
                waiting = self.pending.get(key, [])
                still = [(v, sent) for v, sent in waiting if v > version]
                self.latencies_ms += [(at - sent) * 1000 for v, sent in waiting if v <= version]
                if still:
                    self.pending[key] = still
                else:
                    self.pending.pop(key, None)

    def _run(self) -> None:
        statement = f"DELETE FROM {quote_ident(self.schema)}.{quote_ident(SEEN_TABLE)} RETURNING *"
        try:
            while not self._stop.wait(self.poll_s):
                rows = self.connection.execute(statement).fetchall()
                self._seen(rows, time.time())
        except BaseException as error:  # re-raised by wait_all/close in the measuring thread
            self._error = error

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(waiting) for waiting in self.pending.values())

    def pending_ages_ms(self, now: float) -> list[float]:
        """How long each event still not visible has waited: a lower bound of its latency."""
        with self._lock:
            return [(now - sent) * 1000 for waiting in self.pending.values() for _, sent in waiting]

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending_count() and time.monotonic() < deadline and self._error is None:
            time.sleep(self.poll_s)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()
        if self._error is not None:
            raise self._error


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def distribution(seen_ms: list[float], unseen_ms: list[float]) -> tuple[dict[str, float], list[str]]:
    """The PERCENTILES of the latencies (ms), and the names of those that are only lower bounds. Events never seen
    count with the time they had waited, so a path that falls behind cannot look fast: a percentile that lands on
    one of them is a lower bound."""
    values = seen_ms + unseen_ms
    bound = min(unseen_ms, default=float("inf"))
    points = {name: percentile(values, fraction) for name, fraction in PERCENTILES}
    return points, [name for name, value in points.items() if value >= bound]


def offer(settings, topic: str, dataset: Dataset, rate: int, visibility: Visibility, tick_s: float = 0.01) -> dict:
    """Send the data set's messages at `rate` per second, in ticks, each stamped with its send time."""
    from include.extract.publisher import KafkaPublisher

    by_name = {entity.name: entity for entity in ENTITIES}
    messages = dataset.messages
    started = time.monotonic()
    sent = 0
    # linger 0: a tick's messages leave at once; batching them would add to the very latency being measured.
    with KafkaPublisher(settings.kafka_bootstrap, topic, client_id="bench-latency", linger_ms=0) as publisher:
        while sent < len(messages):
            due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
            batch = messages[sent:due]
            at = time.time()
            for message in batch:
                entity = by_name[message.entity]
                body = json.loads(message.value)
                visibility.sent(entity.name, body[entity.key], order_value(entity, body[entity.order_column]), at)
            publisher.publish((m.key, m.value) for m in batch)
            sent = due
            time.sleep(max(0.0, started + sent / rate - time.monotonic(), tick_s))
    seconds = time.monotonic() - started
    return {"produced": sent, "producing_s": round(seconds, 2), "achieved_per_s": round(sent / seconds, 1)}


def measure(settings, scratch: Scratch, dataset: Dataset, launch: Callable, rate: int, duration_s: int,
            trigger_interval: str, settle_s: float = 60) -> dict:
    """`launch(label, topic, schema, indices, trigger_interval)` starts the job and returns its Driver."""
    events = min(len(dataset) - 1, rate * duration_s)
    if events < rate:
        raise ValueError(f"the data set has {len(dataset)} events: too few to offer {rate}/s for a second")
    warmup, offered = dataset.head(1), Dataset(dataset.messages[1:events + 1], {})
    schema = scratch.pg_schema("latency")
    with warehouse_session(settings, autocommit=True) as admin:
        for statement in visibility_ddl(schema):
            admin.execute(statement)
    topic = scratch.topic("latency")
    indices = scratch.es_indices("latency")
    driver = launch("latency", topic, schema, indices, trigger_interval)
    visibility = Visibility(settings, schema)
    try:
        # The first event proves the query is up and processing (JVM started, consumer assigned).
        offer(settings, topic, warmup, rate, visibility)
        visibility.wait_all(timeout_s=300)
        if visibility.pending_count():
            raise RuntimeError(f"the job made no event visible within 300 s:\n{driver.tail()}")
        visibility.latencies_ms.clear()
        produced = offer(settings, topic, offered, rate, visibility)
        visibility.wait_all(timeout_s=settle_s)
        unseen_ms = visibility.pending_ages_ms(time.time())
    finally:
        driver.stop()
        heap = driver.finish()
        visibility.close()
    seen_ms = visibility.latencies_ms
    if not seen_ms:
        raise RuntimeError(f"no offered event became visible:\n{driver.tail()}")
    points, lower_bounds = distribution(seen_ms, unseen_ms)
    return {
        "offered_per_s": rate,
        "duration_s": round(events / rate, 1),
        "trigger_interval": trigger_interval,
        **produced,
        "visible": len(seen_ms),
        "not_visible_after_settle": len(unseen_ms),
        "settle_s": settle_s,
        **{f"{name}_ms": round(value, 1) for name, value in points.items()},
        "lower_bounds": lower_bounds,
        "poll_resolution_ms": visibility.poll_s * 1000,
        "driver_heap": heap,
    }
