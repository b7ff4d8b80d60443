"""The reconciler's pure comparison: the merge of two (id, version) sets as a case table, canonical ids (upper-case
input), bucket digests that do not depend on order, and the plan a drift turns into."""

from __future__ import annotations

import random
import uuid

import pytest

from include.entities import CHAT_SESSION, EVENTO, LEAD
from include.reconcile.compare import (DIFFERENT, EXTRA, MISSING, NEWER, OLDER, Difference, bucket_digits, bucket_range,
                                       canonical_id, compare, count_by_kind, differing_buckets, digests, pair_hash)
from include.reconcile.repair import ELASTICSEARCH, POSTGRES, plan_repair

A, B, C = "0a1b2c3d-0000-4000-8000-00000000000a", "1b2c3d4e-0000-4000-8000-00000000000b", \
    "fedcba98-0000-4000-8000-00000000000c"

CASES = {
    # name: (reference pairs, checked pairs, expected differences as (id, kind, expected, found, raw id))
    "equal": ([(A, 1), (B, 2)], [(B, 2), (A, 1)], []),
    "both empty": ([], [], []),
    "missing": ([(A, 1), (B, 2)], [(A, 1)], [(B, MISSING, 2, None, None)]),
    "all missing": ([(A, 1)], [], [(A, MISSING, 1, None, None)]),
    "extra": ([(A, 1)], [(A, 1), (C, 5)], [(C, EXTRA, None, 5, C)]),
    "all extra": ([], [(A, 1)], [(A, EXTRA, None, 1, A)]),
    "older": ([(A, 10)], [(A, 9)], [(A, OLDER, 10, 9, A)]),
    "newer": ([(A, 10)], [(A, 11)], [(A, NEWER, 10, 11, A)]),
    "upper-case checked id is the same id": ([(A, 1)], [(A.upper(), 1)], []),
    "upper-case reference id is the same id": ([(A.upper(), 1)], [(A, 1)], []),
    "upper-case and older": ([(A, 2)], [(A.upper(), 1)], [(A, OLDER, 2, 1, A.upper())]),
    "two spellings of one id: the canonical one is kept": (
        [(A, 1)], [(A.upper(), 1), (A, 1)], [(A, EXTRA, None, 1, A.upper())]),
    "two spellings, upper-case only extra id": ([], [(C.upper(), 3)], [(C, EXTRA, None, 3, C.upper())]),
    "every kind at once": ([(A, 1), (B, 5), (C, 7)], [(B, 4), (C, 8), ("ffffffff-0000-4000-8000-000000000000", 1)],
                           [(A, MISSING, 1, None, None), (B, OLDER, 5, 4, B), (C, NEWER, 7, 8, C),
                            ("ffffffff-0000-4000-8000-000000000000", EXTRA, None, 1,
                             "ffffffff-0000-4000-8000-000000000000")]),
}


@pytest.mark.parametrize("name", CASES)
def test_compare(name):
    reference, checked, expected = CASES[name]
    assert compare(reference, checked) == [Difference(*row) for row in expected]


def test_content_hashes_differ_without_an_order():
    """Versions that are hashes of the rows' content (a position-ordered entity against its source) tell equal from
    different only: neither a lower nor a higher hash is older or newer."""
    differences = compare([(A, 10), (B, 10), (C, 3)], [(A, 9), (B, 11), (C, 3)], ordered=False)
    assert differences == [Difference(A, DIFFERENT, 10, 9, A), Difference(B, DIFFERENT, 10, 11, B)]


def test_counts_name_every_kind():
    assert count_by_kind(compare([(A, 1), (B, 1)], [(A, 2)])) == {MISSING: 1, EXTRA: 0, OLDER: 0, NEWER: 1,
                                                                   DIFFERENT: 0}


def test_pair_hash_is_what_postgres_computes_for_the_canonical_id():
    # SELECT ('x' || left(md5('0a1b2c3d-0000-4000-8000-00000000000a:1700000000000000'), 16))::bit(64)::bigint
    assert pair_hash(A, 1_700_000_000_000_000) == -6555073491224618495  # Postgres 15's answer
    assert pair_hash(A.upper(), 1_700_000_000_000_000) == -6555073491224618495
    assert pair_hash(A, 1) != pair_hash(A, 2)
    assert -2**63 <= pair_hash(B, 3) < 2**63


def test_digests_ignore_order_and_spelling_and_see_one_version_change():
    pairs = [(str(uuid.uuid4()), random.randrange(10**15)) for _ in range(2000)]
    shuffled = random.sample(pairs, len(pairs))
    respelled = [(i.upper(), v) for i, v in shuffled]
    assert digests(pairs, 2) == digests(shuffled, 2) == digests(respelled, 2)
    changed = list(pairs)
    changed[7] = (changed[7][0], changed[7][1] + 1)
    assert differing_buckets(digests(pairs, 2), digests(changed, 2)) == [pairs[7][0][:2]]
    # A bucket present on one side only differs too.
    assert differing_buckets({"a": (1, 5)}, {}) == ["a"] and differing_buckets({}, {"b": (1, 5)}) == ["b"]


@pytest.mark.parametrize("rows, digits", [(0, 1), (32, 1), (512, 1), (100_000, 3), (1_000_000, 4), (10**12, 8)])
def test_bucket_digits_keep_buckets_small(rows, digits):
    assert bucket_digits(rows) == digits


def test_bucket_range_spans_every_uuid_with_the_prefix():
    lo, hi = bucket_range("0a1")
    assert (lo, hi) == ("0a100000-0000-0000-0000-000000000000", "0a1fffff-ffff-ffff-ffff-ffffffffffff")
    assert lo <= A <= hi and not lo <= B <= hi
    with pytest.raises(ValueError):
        bucket_range("0a1b2c3d4")


def test_canonical_id_lowercases_text_and_uuids():
    assert canonical_id(uuid.UUID(A)) == A == canonical_id(A.upper())


PLAN_CASES = {
    # name: (entity, {store: differences}, (index, delete, republish, unrepairable stores))
    "elasticsearch lacks or holds older: indexed from postgres": (
        LEAD, {ELASTICSEARCH: [Difference(A, MISSING, 1, None), Difference(B, OLDER, 2, 1, B)]},
        ((A, B), (), (), ())),
    "an extra document is deleted at the version seen, by its own spelling": (
        LEAD, {ELASTICSEARCH: [Difference(C, EXTRA, None, 9, C.upper())]}, ((), ((C.upper(), 9),), (), ())),
    "elasticsearch newer, with a source: re-published": (
        LEAD, {ELASTICSEARCH: [Difference(A, NEWER, 1, 2, A)]}, ((), (), (A,), ())),
    "elasticsearch newer, no source: unrepairable": (
        EVENTO, {ELASTICSEARCH: [Difference(A, NEWER, 1, 2, A)]}, ((), (), (), (ELASTICSEARCH,))),
    "postgres lacks, holds older or holds extra: re-published": (
        LEAD, {POSTGRES: [Difference(A, MISSING, 1, None), Difference(B, OLDER, 2, 1, B),
                          Difference(C, EXTRA, None, 1, C)]}, ((), (), (A, B, C), ())),
    "postgres's content differs from the source's: re-published": (
        CHAT_SESSION, {POSTGRES: [Difference(A, DIFFERENT, 1, 2, A)]}, ((), (), (A,), ())),
    "postgres newer than the source: unrepairable": (
        LEAD, {POSTGRES: [Difference(A, NEWER, 1, 2, A)]}, ((), (), (), (POSTGRES,))),
    "one id drifting in both stores is re-published once": (
        LEAD, {POSTGRES: [Difference(A, OLDER, 2, 1, A)], ELASTICSEARCH: [Difference(A, NEWER, 1, 2, A)]},
        ((), (), (A,), ())),
    "no drift, nothing to do": (LEAD, {}, ((), (), (), ())),
}


@pytest.mark.parametrize("name", PLAN_CASES)
def test_plan_repair(name):
    entity, drift, (index, delete, republish, unrepairable) = PLAN_CASES[name]
    plan = plan_repair(entity, drift)
    assert (plan.index, plan.delete, plan.republish) == (index, delete, republish)
    assert tuple(store for store, _, _ in plan.unrepairable) == unrepairable
    for _, _, reason in plan.unrepairable:
        assert "newer" in reason
