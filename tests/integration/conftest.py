"""Fixtures for the extraction's tests on the real Postgres and Kafka (the stand-in schema, endpoints and topic
reader they share with the e2e tests are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def restricted_source_db(settings, source_schema):
    """A connection to the stand-in database as a role of the test's own that may read `source_schema` and
    nothing more: like a hosted Supabase role without pg_read_all_stats, it sees other roles' sessions in
    pg_stat_activity without their transaction start. The role is dropped afterwards."""
    import uuid

    from include.connections import pg_session
    from include.schema import quote_ident

    role, password = f"test_reader_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with pg_session(settings, settings.pg_source_db) as admin:
        admin.autocommit = True
        admin.execute(f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT USAGE ON SCHEMA {quote_ident(source_schema)} TO {quote_ident(role)}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {quote_ident(source_schema)} TO {quote_ident(role)}")
        try:
            with pg_session(settings.model_copy(update={"pg_user": role, "pg_password": password}),
                                  settings.pg_source_db) as connection:
                yield connection
        finally:
            admin.execute(f"DROP OWNED BY {quote_ident(role)}")
            admin.execute(f"DROP ROLE {quote_ident(role)}")
