"""The Elasticsearch sink: external versions on the real cluster, and bulk-item inspection against a scripted
bulk endpoint (429/5xx retried with backoff, other failures raised)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.contract import tombstone_message
from include.entities import CHAT_SESSION, ENTITIES, EVENTO, LEAD
from spark import validation as V
from spark.sinks import elastic as E
from tests.stream_support import T0, as_bytes, chat_message, evento_message, lead_message

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def sink(settings, es_prefix):
    sink = E.ElasticsearchSink(settings.es_url, index_prefix=es_prefix)
    sink.ensure_indices(ENTITIES)
    return sink


def micros(timestamp: dt.datetime) -> int:
    return round(timestamp.timestamp() * 1_000_000)


def position_version(position: str) -> int:
    """include/sql/sink_order.sql position_version, worked out here independently."""
    lsn, index = (int(part, 16) for part in position.split("/"))
    return (lsn << 16) + min(index, 65535)


def index_actions(values) -> list[tuple]:
    """The rows the Postgres merge would hand on for these messages (each id once): (kind, id, version, deleted,
    doc), the document rendered as the job renders it."""
    rows = []
    for value in values:
        verdict = V.validate(as_bytes(value), 64 * 1024)
        version = position_version(verdict.position) if verdict.position else micros(verdict.version)
        rows.append((verdict.entity.name, verdict.key, version, verdict.deleted, V.render(verdict.row)))
    return rows


@pytest.fixture
def write(sink, es):
    def run(values):
        counts, refused = sink.write(index_actions(values))
        assert refused == []
        es.indices.refresh(index=",".join(sink.index_name(e) for e in ENTITIES))
        return counts

    return run


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_documents_hold_every_field_with_the_version_of_their_version_column(es, sink, write):
    lead, chat, evento = lead_message(), chat_message(), evento_message()
    assert write([lead, chat, evento]) == {"indexed": 3}

    doc = es.get(index=sink.index_name(LEAD), id=lead["id"])
    assert doc["_version"] == micros(lead["updated_at"])
    source = doc["_source"]
    assert set(source) == {c.name for c in LEAD.columns}
    for name in ("nome", "email", "nome_empresa", "localizacao", "interesse", "score_qualificacao", "utm_campaign"):
        assert source[name] == lead[name], name
    for name in ("created_at", "updated_at", "last_interaction_at", "processado_em"):
        assert instant(source[name]) == lead[name], name

    chat_doc = es.get(index=sink.index_name(CHAT_SESSION), id=chat["id"])
    assert chat_doc["_version"] == position_version(chat["source_position"])
    chat_doc = chat_doc["_source"]
    assert chat_doc["source_position"] == chat["source_position"]
    assert (chat_doc["pages_visited"], chat_doc["perguntas_feitas"], chat_doc["ended_at"]) == (["/", "/preços"], [], None)
    evento_doc = es.get(index=sink.index_name(EVENTO), id=evento["id"])["_source"]
    assert evento_doc["valor"] == 12.5 and evento_doc["payload"]["evento"] == "clique"

    # Searchable: analysed text with accents, keywords, arrays.
    hits = es.search(index=sink.index_name(LEAD), query={"match": {"nome": "conceição"}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == [lead["id"]]
    hits = es.search(index=sink.index_name(CHAT_SESSION), query={"term": {"pages_visited": "/preços"}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == [chat["id"]]


def test_stale_versions_are_conflicts_and_replays_rewrite_unchanged(es, sink, write):
    record_id = lead_message()["id"]
    write([lead_message(id=record_id, updated_at=T0 + HOUR, nome="novo")])
    assert write([lead_message(id=record_id, updated_at=T0, nome="velho")]) == {"stale": 1}
    assert write([lead_message(id=record_id, updated_at=T0 + HOUR, nome="novo")]) == {"indexed": 1}
    doc = es.get(index=sink.index_name(LEAD), id=record_id)
    assert (doc["_source"]["nome"], doc["_version"]) == ("novo", micros(T0 + HOUR))


def test_tombstones_delete_unless_the_document_is_newer(es, sink, write):
    kept, deleted, never = (lead_message()["id"] for _ in range(3))
    write([lead_message(id=kept, updated_at=T0 + 2 * HOUR), lead_message(id=deleted, updated_at=T0)])
    counts = write([tombstone_message(LEAD, kept, T0 + HOUR), tombstone_message(LEAD, deleted, T0 + HOUR),
                    tombstone_message(LEAD, never, T0 + HOUR)])
    assert counts == {"stale": 1, "deleted": 1, "absent": 1}
    assert es.exists(index=sink.index_name(LEAD), id=kept)
    assert not es.exists(index=sink.index_name(LEAD), id=deleted)


def test_a_batch_is_split_over_concurrent_bulk_requests(es, sink, write):
    leads = [lead_message() for _ in range(3 * sink.chunk_size + 7)]
    assert write(leads) == {"indexed": len(leads)}
    assert es.count(index=sink.index_name(LEAD))["count"] == len(leads)


def _row(index: str, doc_id: str, source: dict | None, version: int = 1) -> dict:
    return E.action(index, doc_id, version, source is None, None if source is None else json.dumps(source))


def _write(es_url: str, rows: list[dict], max_retries: int = 3, initial_backoff: float = 0.2) -> dict:
    from elasticsearch import Elasticsearch

    with Elasticsearch(es_url, request_timeout=10) as client:
        return E.bulk_write(client, rows, chunk_size=100, max_retries=max_retries, initial_backoff=initial_backoff,
                            max_backoff=1.0)


def test_an_item_refused_by_the_mapping_is_returned_and_the_others_land(es, sink):
    good, bad = lead_message(), lead_message(score_qualificacao="not a number")
    rows = index_actions([good])
    rows.append(("lead", bad["id"], micros(bad["updated_at"]), False, json.dumps(bad, default=str)))
    counts, refused = sink.write(rows)
    assert counts == {"indexed": 1, "refused": 1}
    assert [(kind, record_id) for kind, record_id, _ in refused] == [("lead", bad["id"])]
    assert refused[0][2].startswith("sink_refused: elasticsearch: document_parsing_exception")
    assert es.exists(index=sink.index_name(LEAD), id=good["id"])
    assert not es.exists(index=sink.index_name(LEAD), id=bad["id"])


def test_requests_are_bounded_by_bytes_as_well_as_by_count():
    actions = [{"_source": "x" * 400} for _ in range(10)]
    groups = list(E.chunks(iter(actions), max_actions=4, max_bytes=1000))
    assert [len(group) for group in groups] == [2, 2, 2, 2, 2]
    assert [len(group) for group in E.chunks(iter(actions), max_actions=3, max_bytes=10_000)] == [3, 3, 3, 1]
    # A single document larger than the limit still goes, alone.
    assert [len(g) for g in E.chunks(iter([{"_source": "x" * 5000}, {"_id": "d"}]), max_actions=4, max_bytes=1000)] \
        == [1, 1]


class ScriptedBulk:
    """A local HTTP endpoint answering each _bulk request with the next scripted item status for every item."""

    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.requests: list[tuple[float, int]] = []  # (time, number of actions)
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                lines = self.rfile.read(int(self.headers["Content-Length"])).decode().splitlines()
                actions = [json.loads(line) for line in lines if line.strip()]
                headers = [a for a in actions if set(a) & {"index", "delete", "create", "update"}]
                status = script.statuses[min(len(script.requests), len(script.statuses) - 1)]
                script.requests.append((time.monotonic(), len(headers)))
                items = []
                for header in headers:
                    operation, meta = next(iter(header.items()))
                    item = {"_index": meta["_index"], "_id": meta["_id"], "status": status}
                    if status >= 300:
                        item["error"] = {"type": "es_rejected_execution_exception" if status == 429 else "node_error",
                                         "reason": "scripted"}
                    items.append({operation: item})
                body = json.dumps({"took": 1, "errors": status >= 300, "items": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST  # the client sends _bulk as PUT

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_429_and_5xx_items_are_retried_with_backoff():
    rows = [_row("leads", f"id-{n}", {"nome": str(n)}) for n in range(5)]
    with ScriptedBulk([429, 503, 201]) as bulk:
        assert _write(bulk.url, rows, initial_backoff=0.2).counts == {"indexed": 5}
    assert [n for _, n in bulk.requests] == [5, 5, 5]
    waits = [later - earlier for (earlier, _), (later, _) in zip(bulk.requests, bulk.requests[1:])]
    assert waits[0] >= 0.2 and waits[1] >= 0.4  # exponential backoff


def test_retries_running_out_fail_the_partition():
    rows = [_row("leads", "x", {"nome": "x"})]
    with ScriptedBulk([503]) as bulk:
        with pytest.raises(E.BulkItemError, match="status 503"):
            _write(bulk.url, rows, max_retries=2, initial_backoff=0.05)
    assert len(bulk.requests) == 3


@pytest.mark.parametrize("ok, item, expected", [
    (True, {"index": {"status": 201}}, "indexed"),
    (True, {"delete": {"status": 200}}, "deleted"),
    (False, {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}, "stale"),
    (False, {"delete": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}, "stale"),
    (False, {"delete": {"status": 404, "result": "not_found"}}, "absent"),
    (False, {"index": {"status": 400, "error": {"type": "mapper_parsing_exception"}}}, "refused"),
    (False, {"index": {"status": 400, "error": {"type": "document_parsing_exception"}}}, "refused"),
    (False, {"index": {"status": 400, "error": {"type": "illegal_argument_exception"}}}, "refused"),
])
def test_item_outcomes(ok, item, expected):
    assert E.outcome(ok, item) == expected


@pytest.mark.parametrize("item", [
    {"index": {"status": 404, "error": {"type": "index_not_found_exception"}}},
    {"index": {"status": 409, "error": {"type": "some_other_conflict"}}},
    {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
    {"index": {"status": 503, "error": {"type": "unavailable_shards_exception"}}},
    {"index": {"status": 403, "error": {"type": "cluster_block_exception"}}},
    {"index": {"status": 400, "error": {"type": "index_closed_exception"}}},
])
def test_other_item_failures_raise(item):
    with pytest.raises(E.BulkItemError):
        E.outcome(False, item)
