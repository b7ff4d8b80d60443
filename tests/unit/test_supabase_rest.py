"""The Supabase REST adapter at its HTTP boundary (respx intercepts supabase-py's httpx client).

No PostgREST runs here: these tests pin the requests the adapter makes (path, select, filters, order, limit,
headers) and how it reads the answers (pages, counts, errors). Whether a real PostgREST answers them the same
way is outside what this project can test locally.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import httpx
import pytest
import respx

from include.entities import LEAD
from include.extract.extractor import RunOptions, extract_entity
from include.extract.sources import POSTGREST_MAX_ROWS, Position, SourceError, SupabaseRestSource

URL = "https://abcdefgh.supabase.test"
KEY = "service-role-key-for-tests"
LEADS = f"{URL}/rest/v1/leads"
DELETED = f"{URL}/rest/v1/deleted_records"
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def source():
    return SupabaseRestSource.connect(URL, KEY, schema="crm")


def lead_json(moment: dt.datetime, record_id: str | None = None) -> dict:
    row = {name: None for name in LEAD.field_names}
    row.update(id=record_id or str(uuid.uuid4()), nome="Sebastião Magalhães", updated_at=moment.isoformat(),
               interesse=["apartamento", "uso do FGTS"], localizacao={"cidade": "São Luís", "estado": "MA"},
               created_at=(moment - dt.timedelta(days=3)).isoformat())
    return row


def test_first_page_request(source):
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(LEADS).mock(return_value=httpx.Response(200, json=[lead_json(T0)]))
        rows = source.read_changes(LEAD, None, 500)

    request = route.calls.last.request
    assert request.url.params["select"] == ",".join(LEAD.field_names)
    assert request.url.params["order"] == "updated_at.asc,id.asc"
    assert request.url.params["limit"] == "500"
    assert "or" not in request.url.params
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept-profile"] == "crm"
    assert rows[0]["updated_at"] == T0 and rows[0]["created_at"] == T0 - dt.timedelta(days=3)
    assert rows[0]["localizacao"] == {"cidade": "São Luís", "estado": "MA"}


def test_keyset_filter_after_a_position(source):
    after = Position(dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc),
                     "5b0c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f")
    with respx.mock() as mock:
        route = mock.get(LEADS).mock(return_value=httpx.Response(200, json=[]))
        assert source.read_changes(LEAD, after, 1000) == []

    stamp = '"2025-03-01T12:00:00.123456+00:00"'
    assert route.calls.last.request.url.params["or"] == (
        f'(updated_at.gt.{stamp},and(updated_at.eq.{stamp},id.gt."5b0c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"))')


def test_pages_follow_the_last_row_until_a_short_page(source):
    """Three pages through the real page loop: each request continues after the previous page's last row."""
    pages = [[lead_json(T0) for _ in range(3)] for _ in range(2)] + [[lead_json(T0 + dt.timedelta(seconds=1))]]
    for page in pages:
        page.sort(key=lambda row: row["id"])
    sent = []

    class Publisher:
        max_value_bytes = 1024 * 1024

        def send(self, messages):
            sent.extend(json.loads(value) for _, value in messages)
            return self

        done = True

        def wait(self):
            return 0

        def flush(self):
            pass

    class State:
        cursors = {}

        def cursor(self, name):
            return self.cursors.get(name)

        def commit_page(self, name, position, dead_letters):
            self.cursors[name] = position

    # First the look for rows dated beyond the clock (none), then the pages.
    answers = [httpx.Response(200, json=[])] + [httpx.Response(200, json=page) for page in pages]
    before = dt.datetime.now(dt.timezone.utc)
    with respx.mock() as mock:
        leads = mock.get(LEADS).mock(side_effect=answers)
        mock.get(DELETED).mock(return_value=httpx.Response(200, json=[]))
        options = RunOptions(page_size=3, lookback=dt.timedelta(0))
        result = extract_entity(LEAD, source, State(), Publisher(), options)
    after = dt.datetime.now(dt.timezone.utc)

    assert result.records.pages == 3 and [m["id"] for m in sent] == [r["id"] for page in pages for r in page]
    future, *page_calls = [call.request.url.params for call in leads.calls]
    # The REST source's clock is this machine's held back by its margin: rows beyond it plus the skew are looked
    # for, rows up to it minus the safety margin are read.
    clock = dt.datetime.fromisoformat(future["or"].split(",")[0].removeprefix("(updated_at.gt.").strip('"')
                                      ) - options.allowed_skew
    assert before - source.clock_margin <= clock <= after - source.clock_margin
    assert {params["updated_at"] for params in page_calls} == {f"lte.{(clock - options.safety_margin).isoformat()}"}
    filters = [params.get("or") for params in page_calls]
    assert filters[0] is None
    for previous, request_filter in zip(pages, filters[1:]):
        last = previous[-1]
        assert f'id.gt."{last["id"]}"' in request_filter
        assert f'updated_at.eq."{last["updated_at"]}"' in request_filter
    assert all(params["limit"] == "3" for params in page_calls)


def test_deletions_are_read_from_deleted_records_for_the_entity(source):
    deleted_at = T0 + dt.timedelta(minutes=5)
    record_id = str(uuid.uuid4())
    with respx.mock() as mock:
        route = mock.get(DELETED).mock(return_value=httpx.Response(
            200, json=[{"id": record_id, "deleted_at": deleted_at.isoformat()}]))
        rows = source.read_deletions(LEAD, None, 100)

    params = route.calls.last.request.url.params
    assert params["entity"] == "eq.lead" and params["order"] == "deleted_at.asc,id.asc"
    assert params["select"] == "id,deleted_at"
    assert rows == [{"id": record_id, "updated_at": deleted_at}]


def test_count_reads_the_content_range_total(source):
    with respx.mock() as mock:
        route = mock.head(LEADS).mock(return_value=httpx.Response(200, headers={"content-range": "*/25000"}))
        assert source.count(LEAD, since=T0) == 25000

    request = route.calls.last.request
    assert request.headers["prefer"] == "count=exact"
    assert request.url.params["updated_at"] == f"gte.{T0.isoformat()}"


def test_a_page_larger_than_postgrest_max_rows_is_refused_before_any_request(source):
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(LEADS)
        with pytest.raises(ValueError, match="db-max-rows"):
            source.read_changes(LEAD, None, POSTGREST_MAX_ROWS + 1)
        with pytest.raises(ValueError, match="exceeds the source's cap"):
            extract_entity(LEAD, source, None, None, RunOptions(page_size=POSTGREST_MAX_ROWS + 1))
    assert not route.called


def test_more_rows_than_asked_is_an_error(source):
    with respx.mock() as mock:
        mock.get(LEADS).mock(return_value=httpx.Response(200, json=[lead_json(T0) for _ in range(3)]))
        with pytest.raises(SourceError, match="3 rows of 'leads' for a limit of 2"):
            source.read_changes(LEAD, None, 2)


def test_an_http_error_names_the_table_and_postgrest_message(source):
    body = {"code": "42501", "message": "permission denied for table leads", "hint": None, "details": None}
    with respx.mock() as mock:
        mock.get(LEADS).mock(return_value=httpx.Response(401, json=body))
        with pytest.raises(SourceError, match="'leads' failed: 42501 permission denied for table leads"):
            source.read_changes(LEAD, None, 10)


def test_a_gateway_error_without_postgrest_json_is_reported_with_its_status(source):
    with respx.mock() as mock:
        route = mock.get(LEADS).mock(return_value=httpx.Response(502, text="<html>Bad Gateway</html>"))
        with pytest.raises(SourceError, match="'leads' failed: 502 Bad Gateway"):
            source.read_changes(LEAD, None, 10)
    assert route.call_count == 1
