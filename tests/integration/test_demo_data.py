"""The demo-data generator fills the Supabase stand-in with plausible, linked rows, and its activity mode
changes them the way the extraction must notice (updates by trigger, deletions captured, new rows)."""

from __future__ import annotations

import datetime as dt
import re

from include.extract.demo_data import DemoSize, activity, generate
from include.schema import quote_ident


def _fetch(connection, sql, params=()):
    rows = connection.execute(sql, params).fetchall()
    connection.commit()
    return rows


def test_generated_leads_and_sessions_look_real_and_are_linked(source_db, source_schema):
    schema = quote_ident(source_schema)
    counts = generate(source_db, DemoSize(300, sessions_per_lead=1.5), source_schema, seed=11)

    leads = _fetch(source_db, f"SELECT nome, email, telefone, localizacao, interesse, utm_source, utm_medium, "
                              f"created_at, updated_at FROM {schema}.leads")
    sessions = _fetch(source_db, f"SELECT s.lead_id, l.id, s.started_at, l.created_at, s.ended_at, s.is_active, "
                                 f"s.pages_visited FROM {schema}.chat_sessions s LEFT JOIN {schema}.leads l "
                                 f"ON l.id = s.lead_id")
    assert len(leads) == counts["leads"] == 300 and len(sessions) == counts["chat_sessions"] > 300
    assert sum(1 for nome, *_ in leads if not nome.isascii()) > 100, "Brazilian names carry accents"
    now = dt.datetime.now(dt.timezone.utc)
    for nome, email, telefone, localizacao, interesse, utm_source, utm_medium, created, updated in leads:
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@[a-z.]+\.(com|com\.br)", email), email
        assert re.fullmatch(r"\+55 \(\d{2}\) 9\d{4}-\d{4}", telefone), telefone
        assert localizacao["pais"] == "Brasil" and len(localizacao["estado"]) == 2 and localizacao["cidade"]
        assert 1 <= len(interesse) <= 3
        assert (utm_source is None) == (utm_medium is None)
        assert created <= updated <= now
    for lead_id, joined_id, started, lead_created, ended, active, pages in sessions:
        assert joined_id == lead_id, "every session belongs to an existing lead"
        assert started >= lead_created and pages
        assert (ended is None) == active


def test_activity_updates_a_share_erases_some_and_adds_new(source_db, source_schema):
    schema = quote_ident(source_schema)
    generate(source_db, DemoSize(300), source_schema, seed=12)
    before = dict(_fetch(source_db, f"SELECT id, updated_at FROM {schema}.leads"))

    changes = activity(source_db, source_schema, update_share=0.3, delete=4, insert=5, seed=12)

    after = dict(_fetch(source_db, f"SELECT id, updated_at FROM {schema}.leads"))
    erased = _fetch(source_db, f"SELECT id FROM {schema}.deleted_records WHERE entity = 'lead'")
    moved = [i for i in after if i in before and after[i] != before[i]]
    assert changes["deleted_leads"] == len(erased) == 4
    assert not {i for (i,) in erased} & set(after)
    # An updated lead may be among the erased ones afterwards.
    assert len(moved) <= changes["updated_leads"] <= len(moved) + len(erased) and 40 < len(moved) < 150
    new = set(after) - set(before)
    assert len(new) == changes["inserted_leads"] == 5
    assert min(after[i] for i in new) > max(before.values()), "new leads are created now, after every old one"
    orphans = _fetch(source_db, f"SELECT count(*) FROM {schema}.chat_sessions s WHERE NOT EXISTS "
                                f"(SELECT 1 FROM {schema}.leads l WHERE l.id = s.lead_id)")
    assert orphans == [(0,)], "an erased lead's sessions are erased with it"
