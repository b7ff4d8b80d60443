"""Extraction state in the warehouse: one cursor per stream, and the dead letters of rejected source rows.

A page's dead letters and its cursor move are written in one transaction, after the page was acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.extract.sources import Position

STAGE = "extract"

_READ_CURSOR = "SELECT cursor_updated_at, cursor_id FROM extract_cursors WHERE entity = %(name)s"

# Only forward: a lookback or replay page that ends before the stored cursor leaves it where it is.
_ADVANCE_CURSOR = """
INSERT INTO extract_cursors (entity, cursor_updated_at, cursor_id, moved_at)
VALUES (%(name)s, %(version)s, CAST(%(key)s AS uuid), now())
ON CONFLICT (entity) DO UPDATE
    SET cursor_updated_at = EXCLUDED.cursor_updated_at, cursor_id = EXCLUDED.cursor_id, moved_at = now()
    WHERE (extract_cursors.cursor_updated_at, extract_cursors.cursor_id)
        < (EXCLUDED.cursor_updated_at, EXCLUDED.cursor_id)
"""

_INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (stage, entity, reason, raw_payload)
VALUES (%(stage)s, %(entity)s, %(reason)s, %(raw_payload)s)
ON CONFLICT (entity, md5(raw_payload)) WHERE stage = 'extract' DO NOTHING
"""


@dataclass(frozen=True)
class DeadLetter:
    entity: str
    reason: str
    raw_payload: str


class ExtractState:
    """Cursors and dead letters over a DB-API connection to the warehouse (psycopg 2 or 3)."""

    def __init__(self, connection):
        self.connection = connection

    def cursor(self, name: str) -> Position | None:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(_READ_CURSOR, {"name": name})
                row = cursor.fetchone()
        finally:
            self.connection.rollback()
        return None if row is None else Position(row[0], str(row[1]))

    def commit_page(self, name: str, position: Position | None, dead_letters: list[DeadLetter]) -> None:
        """Record the page's rejects and move the cursor to `position`, atomically."""
        try:
            with self.connection.cursor() as cursor:
                if dead_letters:
                    cursor.executemany(_INSERT_DEAD_LETTER, [
                        {"stage": STAGE, "entity": d.entity, "reason": d.reason, "raw_payload": d.raw_payload}
                        for d in dead_letters
                    ])
                if position is not None:
                    cursor.execute(_ADVANCE_CURSOR, {"name": name, "version": position.version, "key": position.key})
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
