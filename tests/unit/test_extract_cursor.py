"""The page loop's cursor rules, against in-memory stand-ins for the source, the state and the broker.

The stand-ins keep the real contracts: the source answers keyset reads strictly after a position (as the SQL
row comparison does), the publisher acknowledges or fails whole pages, the state keeps the cursor forward-only
as the warehouse upsert does.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from include.entities import LEAD
from include.extract.extractor import RunOptions, extract_entity, last_position, start_position
from include.extract.publisher import PublishError
from include.extract.sources import AFTER_ALL_KEYS, Position, SourceClock, deletion_row

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def _key(row):
    # NULL keys sort last within a version, as ORDER BY ... ASC does in PostgreSQL and PostgREST.
    return (row[LEAD.version_column], row[LEAD.key] is None, str(row[LEAD.key]))


class MemorySource:
    max_page_size = None

    def __init__(self, rows, deletions=(), now=T0 + dt.timedelta(days=1), oldest_open_write=None, visible=True):
        self.rows = sorted(rows, key=_key)
        self.deletions = sorted(deletions, key=_key)
        self.reads: list[tuple[Position | None, int]] = []
        self.now, self.oldest_open_write, self.visible = now, oldest_open_write, visible

    def clock(self):
        return SourceClock(self.now, self.oldest_open_write, self.visible)

    @staticmethod
    def _after(rows, after, limit, until):
        if after is not None:
            # SQL: (version, key) > (v, k); a NULL key compares as unknown, so it passes only on version.
            rows = [r for r in rows if r[LEAD.version_column] > after.version
                    or (r[LEAD.version_column] == after.version and r[LEAD.key] is not None
                        and str(r[LEAD.key]) > after.key)]
        if until is not None:
            rows = [r for r in rows if r[LEAD.version_column] <= until]
        return [dict(r) for r in rows[:limit]]

    def read_changes(self, entity, after, limit, until=None):
        if until is not None:  # the extraction's page reads, not its look for rows dated in the future
            self.reads.append((after, limit))
        return self._after(self.rows, after, limit, until)

    def read_deletions(self, entity, after, limit, until=None):
        return self._after(self.deletions, after, limit, until)

    def count(self, entity, since=None):
        return len(self.rows)


class MemoryState:
    def __init__(self, cursors=None):
        self.cursors: dict[str, Position] = dict(cursors or {})
        self.dead_letters = []
        self.commits: list[tuple[str, Position | None]] = []

    def cursor(self, name):
        return self.cursors.get(name)

    def commit_page(self, name, position, dead_letters):
        self.commits.append((name, position))
        self.dead_letters.extend(dead_letters)
        if position is not None and (name not in self.cursors or position > self.cursors[name]):
            self.cursors[name] = position


class Acked:
    def __init__(self, count):
        self.count = count
        self.done = True

    def wait(self):
        return self.count


class Failed:
    done = True

    def wait(self):
        raise PublishError("broker said no")


class MemoryPublisher:
    """Acknowledges every page except the `fail_page`-th one (1-based) it is handed."""

    max_value_bytes = 1024 * 1024 - 1000

    def __init__(self, fail_page: int | None = None):
        self.fail_page = fail_page
        self.pages: list[list[tuple[bytes, bytes]]] = []

    def send(self, messages):
        self.pages.append(list(messages))
        return Failed() if len(self.pages) == self.fail_page else Acked(len(self.pages[-1]))

    def flush(self):
        pass

    @property
    def values(self):
        return [json.loads(value) for page in self.pages for _, value in page]


def lead(version, **fields):
    return {"id": str(uuid.uuid4()), "updated_at": version, "nome": "Conceição Araújo", **fields}


def test_rows_sharing_one_version_cross_page_boundaries_without_loss_or_repeat():
    rows = [lead(T0) for _ in range(2500)] + [lead(T0 + dt.timedelta(seconds=i)) for i in range(1, 301)]
    source, state, publisher = MemorySource(rows), MemoryState(), MemoryPublisher()

    result = extract_entity(LEAD, source, state, publisher, RunOptions(page_size=700))

    ids = [m["id"] for m in publisher.values]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    assert len(ids) == len(set(ids))
    assert result.records.pages == 4 and result.records.published == 2800
    assert state.cursors["lead"] == Position(T0 + dt.timedelta(seconds=300), rows[-1]["id"])


@pytest.mark.parametrize("rows, expected_reads", [(1400, 3), (1399, 2)])
def test_a_short_page_ends_the_run_and_a_full_one_asks_again(rows, expected_reads):
    source = MemorySource([lead(T0 + dt.timedelta(microseconds=i)) for i in range(rows)])

    extract_entity(LEAD, source, MemoryState(), MemoryPublisher(), RunOptions(page_size=700))

    assert len(source.reads) == expected_reads


def test_cursor_stays_at_the_last_acknowledged_page_when_a_later_page_fails():
    rows = [lead(T0 + dt.timedelta(seconds=i)) for i in range(1000)]
    source, state = MemorySource(rows), MemoryState()

    with pytest.raises(PublishError):
        extract_entity(LEAD, source, state, MemoryPublisher(fail_page=3), RunOptions(page_size=100))

    ordered = sorted(rows, key=_key)
    assert state.cursors["lead"] == Position(ordered[199]["updated_at"], ordered[199]["id"])
    assert [name for name, _ in state.commits] == ["lead", "lead"]


def test_pages_are_settled_in_order_even_when_several_are_in_flight():
    rows = [lead(T0 + dt.timedelta(seconds=i)) for i in range(1000)]
    state = MemoryState()

    extract_entity(LEAD, MemorySource(rows), state, MemoryPublisher(), RunOptions(page_size=100, pages_in_flight=3))

    positions = [position for name, position in state.commits if name == "lead"]
    assert positions == sorted(positions) and len(positions) == 10


def test_lookback_rereads_a_window_before_the_cursor_and_never_moves_it_back():
    rows = [lead(T0 + dt.timedelta(minutes=i)) for i in range(60)]
    cursor = Position(rows[-1]["updated_at"], rows[-1]["id"])
    state, publisher = MemoryState({"lead": cursor}), MemoryPublisher()

    options = RunOptions(page_size=5, lookback=dt.timedelta(minutes=10))
    extract_entity(LEAD, MemorySource(rows), state, publisher, options)

    republished = sorted(dt.datetime.fromisoformat(m["updated_at"]) for m in publisher.values)
    assert republished == [r["updated_at"] for r in rows if r["updated_at"] > cursor.version - dt.timedelta(minutes=10)]
    assert state.cursors["lead"] == cursor


def test_backfill_from_a_timestamp_includes_rows_at_exactly_that_time():
    rows = [lead(T0 + dt.timedelta(hours=i)) for i in range(10)]
    publisher = MemoryPublisher()

    extract_entity(LEAD, MemorySource(rows), MemoryState(), publisher,
                   RunOptions(from_timestamp=T0 + dt.timedelta(hours=7)))

    assert len(publisher.values) == 3


def test_bad_rows_become_dead_letters_and_the_page_goes_on():
    good = [lead(T0 + dt.timedelta(seconds=i)) for i in range(5)]
    no_id = lead(T0 + dt.timedelta(seconds=2), id=None)
    naive = lead(T0 + dt.timedelta(seconds=3), last_interaction_at=dt.datetime(2025, 1, 1))
    source, state, publisher = MemorySource(good + [no_id, naive]), MemoryState(), MemoryPublisher()

    result = extract_entity(LEAD, source, state, publisher, RunOptions(page_size=100))

    assert sorted(m["id"] for m in publisher.values) == sorted(r["id"] for r in good)
    reasons = sorted(d.reason for d in state.dead_letters)
    assert reasons[0] == "missing id" and reasons[1].startswith("unserialisable value: timestamp without time zone")
    assert result.records.dead_letters == 2
    payloads = [json.loads(d.raw_payload) for d in state.dead_letters]
    assert {p["nome"] for p in payloads} == {"Conceição Araújo"}
    assert state.cursors["lead"] == Position(good[-1]["updated_at"], good[-1]["id"])


def test_max_rows_caps_each_stream():
    source = MemorySource([lead(T0 + dt.timedelta(seconds=i)) for i in range(50)])
    publisher = MemoryPublisher()

    result = extract_entity(LEAD, source, MemoryState(), publisher, RunOptions(page_size=20, max_rows=30))

    assert result.records.published == 30 and [limit for _, limit in source.reads] == [20, 10]


def test_deletions_become_tombstones_under_their_own_cursor():
    record_id = str(uuid.uuid4())
    deleted_at = T0 + dt.timedelta(minutes=3)
    state, publisher = MemoryState(), MemoryPublisher()

    extract_entity(LEAD, MemorySource([], [deletion_row(LEAD, record_id, deleted_at)]), state, publisher)

    [tombstone] = publisher.values
    assert tombstone["id"] == record_id and tombstone["deleted"] is True and tombstone["tipo_evento"] == "lead"
    assert dt.datetime.fromisoformat(tombstone["updated_at"]) == deleted_at
    assert state.cursors == {"lead:deleted": Position(deleted_at, record_id)}


def test_start_position():
    cursor = Position(T0, "0b8f0c1e-0000-4000-8000-000000000000")
    assert start_position(None, RunOptions()) is None
    assert start_position(cursor, RunOptions(lookback=dt.timedelta(0))) == cursor
    assert start_position(cursor, RunOptions(lookback=dt.timedelta(minutes=5))) == Position(
        T0 - dt.timedelta(minutes=5), AFTER_ALL_KEYS)
    assert start_position(cursor, RunOptions(from_timestamp=T0)) == Position(
        T0 - dt.timedelta(microseconds=1), AFTER_ALL_KEYS)


def test_last_position_skips_rows_it_cannot_place():
    keyed = lead(T0)
    assert last_position(LEAD, [keyed]) == Position(T0, keyed["id"])
    assert last_position(LEAD, [keyed, lead(T0, id=None)]) == Position(T0, AFTER_ALL_KEYS)
    assert last_position(LEAD, [keyed, lead(None)]) == Position(T0, keyed["id"])
    assert last_position(LEAD, [lead(None)]) is None


def test_position_orders_like_postgres_uuids_and_needs_a_time_zone():
    upper = Position(T0, "0000000A-0000-4000-8000-000000000000")
    assert upper.key == "0000000a-0000-4000-8000-000000000000"
    # PostgreSQL compares uuids bytewise: 0x0a > 0x09, and hex 'a' sorts after '9' once lower-cased.
    assert upper > Position(T0, "00000009-ffff-4fff-bfff-ffffffffffff")
    assert Position(T0 + dt.timedelta(microseconds=1), "00000000-0000-4000-8000-000000000000") > upper
    assert Position(T0, AFTER_ALL_KEYS) > Position(T0, str(uuid.uuid4()))
    with pytest.raises(ValueError, match="time zone"):
        Position(dt.datetime(2025, 1, 1), AFTER_ALL_KEYS)


NOW = T0 + dt.timedelta(days=1)


def test_a_run_reads_only_versions_up_to_the_sources_clock_minus_the_safety_margin():
    rows = [lead(NOW - dt.timedelta(seconds=s)) for s in (10, 3, 1)]
    source, state, publisher = MemorySource(rows, now=NOW), MemoryState(), MemoryPublisher()

    extract_entity(LEAD, source, state, publisher, RunOptions(safety_margin=dt.timedelta(seconds=2)))
    source.now = NOW + dt.timedelta(seconds=2)
    extract_entity(LEAD, source, state, publisher, RunOptions(safety_margin=dt.timedelta(seconds=2),
                                                              lookback=dt.timedelta(0)))

    published = [m["id"] for m in publisher.values]
    assert published == [r["id"] for r in rows], "the newest waited for the next run, then each once"
    assert state.cursors["lead"] == Position(rows[-1]["updated_at"], rows[-1]["id"])


def test_a_row_dated_beyond_the_allowed_skew_is_a_dead_letter_that_neither_moves_nor_blocks_the_cursor():
    past = [lead(NOW - dt.timedelta(minutes=m)) for m in (3, 2)]
    within_skew = lead(NOW + dt.timedelta(seconds=30))
    future = lead(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc))
    source, state, publisher = MemorySource(past + [within_skew, future], now=NOW), MemoryState(), MemoryPublisher()
    options = RunOptions(page_size=1, allowed_skew=dt.timedelta(minutes=1), lookback=dt.timedelta(0))

    result = extract_entity(LEAD, source, state, publisher, options)

    assert [m["id"] for m in publisher.values] == [r["id"] for r in past]
    [letter] = state.dead_letters
    assert letter.reason.startswith("version_in_future") and result.records.dead_letters == 1
    assert json.loads(letter.raw_payload) == {"id": future["id"], "updated_at": "2099-01-01T00:00:00+00:00"}
    assert state.cursors["lead"] == Position(past[-1]["updated_at"], past[-1]["id"])
    later = lead(NOW + dt.timedelta(seconds=5))
    source.rows.insert(2, later)
    source.now = NOW + dt.timedelta(minutes=1)

    extract_entity(LEAD, source, state, publisher, options)

    assert [m["id"] for m in publisher.values][2:] == [later["id"], within_skew["id"]]
    assert state.cursors["lead"] == Position(within_skew["updated_at"], within_skew["id"])
    assert len(state.dead_letters) == 2, "re-checked on every run (the warehouse keeps one per payload)"


def test_the_cursor_stops_before_the_oldest_open_write_transaction_but_the_rows_after_it_are_published():
    rows = [lead(NOW - dt.timedelta(seconds=s)) for s in (50, 40, 30, 20, 10)]
    opened = NOW - dt.timedelta(seconds=35)
    source, state, publisher = MemorySource(rows, now=NOW, oldest_open_write=opened), MemoryState(), MemoryPublisher()

    result = extract_entity(LEAD, source, state, publisher, RunOptions(page_size=2))

    assert len(publisher.values) == 5 and result.records.cursor_held
    assert state.cursors["lead"] == Position.at_or_after(opened)
    assert start_position(state.cursors["lead"], RunOptions(lookback=dt.timedelta(0))) < Position(opened, str(
        uuid.UUID(int=0))), "the next run re-reads every version the open transaction may still commit"


def test_a_message_above_the_payload_limit_is_a_dead_letter_and_the_cursor_passes_it():
    small, after = lead(T0), lead(T0 + dt.timedelta(seconds=2))
    big = lead(T0 + dt.timedelta(seconds=1), nome="x" * 5000)
    source, state, publisher = MemorySource([small, big, after]), MemoryState(), MemoryPublisher()

    result = extract_entity(LEAD, source, state, publisher, RunOptions(page_size=2, max_payload_bytes=4096))

    assert [m["id"] for m in publisher.values] == [small["id"], after["id"]] and result.records.dead_letters == 1
    [letter] = state.dead_letters
    payload = json.loads(letter.raw_payload)
    assert letter.reason.startswith("payload_too_large") and payload["id"] == big["id"]
    assert 5000 < payload["bytes"] < 5500 and payload["updated_at"] == big["updated_at"].isoformat()
    assert state.cursors["lead"] == Position(after["updated_at"], after["id"])


@pytest.mark.parametrize("name, value", [("safety_margin", dt.timedelta(seconds=-1)),
                                         ("allowed_skew", dt.timedelta(seconds=-1)), ("max_payload_bytes", 0)])
def test_run_options_refuse_negative_bounds(name, value):
    with pytest.raises(ValueError, match=name):
        RunOptions(**{name: value})
