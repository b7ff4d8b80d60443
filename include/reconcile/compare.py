"""Pure comparison of two stores' (id, version) sets: no I/O here.

Ids compare in one canonical form, lower-case text (`canonical_id`): Postgres writes uuids that way, while an
Elasticsearch `_id` is any string a writer chose. Versions compare as integers: the sinks' external version (the
version column's epoch microseconds, or the source position's number: include/sql/sink_order.sql), which is also the
`_version` the Elasticsearch sink writes. A source table without a version column (an entity ordered by source
position) has no version to compare: the source and Postgres compare a hash of the row's content instead, which
tells equal from different but not older from newer (`DIFFERENT`).

A full comparison of two stores of a million rows would move a million pairs from each. Instead each store sums a
64-bit hash of every `id:version` pair per bucket (the first `digits` hex characters of the canonical id) with the
row count: a sum does not depend on the order rows are read in, so Postgres computes it in SQL and Elasticsearch
client-side from pages in whatever order they come. Only buckets whose (count, sum) differ are listed and merged.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

MISSING, EXTRA, OLDER, NEWER, DIFFERENT = "missing", "extra", "older", "newer", "different"
KINDS = (MISSING, EXTRA, OLDER, NEWER, DIFFERENT)
# Rows a bucket holds on average: few enough that listing the buckets of 1,000 drifted ids reads ~30,000 rows.
ROWS_PER_BUCKET = 32
MAX_DIGITS = 8  # the first group of a uuid: bucket bounds never cross a dash

Digest = tuple[int, int]  # (rows, sum of pair hashes)


@dataclass(frozen=True, order=True)
class Difference:
    """One id on which the checked store differs from its reference."""

    id: str  # canonical
    kind: str
    expected: int | None  # the reference's version; None when the reference lacks the id (extra)
    found: int | None  # the checked store's version; None when it lacks the id (missing)
    # The checked store's own spelling of the id (what a delete must name), when the id is there.
    raw_id: str | None = None


def canonical_id(value) -> str:
    return str(value).lower()


def pair_hash(record_id: str, version: int) -> int:
    """The first 8 bytes of md5('<canonical id>:<version>') as a signed 64-bit integer: what reconcile.sql computes
    with ('x' || left(md5(...), 16))::bit(64)::bigint."""
    digest = hashlib.md5(f"{canonical_id(record_id)}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def bucket_digits(rows: int) -> int:
    """Hex digits of the bucket prefix for a store of `rows`: about ROWS_PER_BUCKET rows per bucket."""
    if rows <= ROWS_PER_BUCKET:
        return 1
    return max(1, min(MAX_DIGITS, round(math.log(rows / ROWS_PER_BUCKET, 16))))


def bucket_of(record_id: str, digits: int) -> str:
    return canonical_id(record_id)[:digits]


def digests(pairs: Iterable[tuple[str, int]], digits: int) -> dict[str, Digest]:
    """(rows, sum of pair hashes) per bucket, from pairs in any order."""
    rows: Counter = Counter()
    sums: Counter = Counter()
    for record_id, version in pairs:
        bucket = bucket_of(record_id, digits)
        rows[bucket] += 1
        sums[bucket] += pair_hash(record_id, version)
    return {bucket: (rows[bucket], sums[bucket]) for bucket in rows}


def differing_buckets(reference: Mapping[str, Digest], checked: Mapping[str, Digest]) -> list[str]:
    """Buckets whose rows or hash sums differ, a bucket absent from one side included; sorted."""
    return sorted(b for b in reference.keys() | checked.keys() if reference.get(b) != checked.get(b))


def bucket_range(prefix: str) -> tuple[str, str]:
    """The lowest and highest uuid text starting with `prefix` (at most 8 hex digits)."""
    if not 0 < len(prefix) <= MAX_DIGITS:
        raise ValueError(f"a bucket prefix has 1 to {MAX_DIGITS} hex digits: {prefix!r}")
    return prefix.ljust(8, "0") + "-0000-0000-0000-000000000000", prefix.ljust(8, "f") + "-ffff-ffff-ffff-ffffffffffff"


def compare(reference: Iterable[tuple[str, int]], checked: Iterable[tuple[str, int]],
            ordered: bool = True) -> list[Difference]:
    """Every id on which `checked` differs from `reference`, sorted by id: missing (in the reference only), extra
    (in the checked store only, or a second spelling there of an id it already holds), older or newer (the checked
    store's version against the reference's), or, when the versions are content hashes (`ordered` False),
    different."""
    expected = {canonical_id(record_id): version for record_id, version in reference}
    # The canonical spelling first, so that of two spellings of one id the one a sink writes is the one kept.
    found = sorted(((canonical_id(raw), raw != canonical_id(raw), raw, version) for raw, version in checked))
    differences, seen = [], set()
    for record_id, _, raw, version in found:
        if record_id in seen or record_id not in expected:
            differences.append(Difference(record_id, EXTRA, None, version, raw))
            continue
        seen.add(record_id)
        if not ordered and version != expected[record_id]:
            differences.append(Difference(record_id, DIFFERENT, expected[record_id], version, raw))
        elif version < expected[record_id]:
            differences.append(Difference(record_id, OLDER, expected[record_id], version, raw))
        elif version > expected[record_id]:
            differences.append(Difference(record_id, NEWER, expected[record_id], version, raw))
    differences.extend(Difference(record_id, MISSING, version, None)
                       for record_id, version in expected.items() if record_id not in seen)
    return sorted(differences)


def count_by_kind(differences: Iterable[Difference]) -> dict[str, int]:
    """Differences per kind, every kind present."""
    counts = Counter(d.kind for d in differences)
    return {kind: counts.get(kind, 0) for kind in KINDS}
