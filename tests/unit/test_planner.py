"""The extractor's batch plan (agents/planner.py), table-driven: which uploads the table answers,
which an earlier batch in flight answers, which this batch decodes, and which copies follow a first."""

from __future__ import annotations

from uuid import UUID

import numpy as np
import pytest

from agents.planner import Extraction, Plan, Upload, extraction, plan
from tables.descriptors import Entry

NOW, TTL = 1000.0, 100.0


def uid(n: int) -> UUID:
    return UUID(int=n)


def Hit(bundle_version: str, image_id: UUID | None, written_at: float | None = NOW - 1) -> Entry:
    """A descriptor table entry as the extractor reads it."""
    return Entry(bundle_version, np.zeros(2, np.float32), image_id, written_at)


# (what, uploads as (sha, image id), table hits, bytes in flight, expected Plan)
CASES = [
    ("nothing known: every upload is decoded here, each bytes claimed once",
     [("a", 1), ("b", 2)], [None, None], set(), Plan((), (), (0, 1), ("a", "b"))),
    ("a repeat of the same bytes with the same bundle: the table answers",
     [("a", 1)], [Hit("v2", uid(9))], set(), Plan((0,), (), (), ())),
    ("another bundle's entry answers only the upload that made it (a redelivery)",
     [("a", 9), ("a", 1)], [Hit("v1", uid(9)), Hit("v1", uid(9))], set(), Plan((0,), (), (1,), ("a",))),
    ("an entry older than the TTL answers nothing",
     [("a", 1)], [Hit("v2", uid(9), written_at=NOW - TTL)], set(), Plan((), (), (0,), ("a",))),
    ("an entry without a time never expires",
     [("a", 1)], [Hit("v2", uid(9), written_at=None)], set(), Plan((0,), (), (), ())),
    ("bytes an earlier batch extracts: that batch answers every copy",
     [("a", 1), ("a", 2)], [None, None], {"a"}, Plan((), (0, 1), (), ())),
    ("in-batch copies are all decoded here and claimed once",
     [("a", 1), ("b", 2), ("a", 3)], [None, None, None], set(), Plan((), (), (0, 1, 2), ("a", "b"))),
    ("the table first, then the batch in flight, then this batch",
     [("a", 1), ("b", 2), ("c", 3), ("b", 4)], [Hit("v2", None), None, None, None], {"b"},
     Plan((0,), (1, 3), (2,), ("c",))),
]


@pytest.mark.parametrize("what,uploads,hits,in_flight,expected", CASES, ids=[c[0] for c in CASES])
def test_plan(what, uploads, hits, in_flight, expected):
    got = plan([Upload(sha, uid(n)) for sha, n in uploads], hits, "v2", in_flight, NOW, TTL)
    assert got == expected


def test_without_a_ttl_nothing_expires():
    old = Hit("v2", None, written_at=0.0)
    assert plan([Upload("a", uid(1))], [old], "v2", set(), NOW, 0).table == (0,)


# (what, decoded (index, sha) in plan order, expected Extraction)
EXTRACTIONS = [
    ("distinct bytes: each extracted", [(0, "a"), (1, "b")], Extraction((0, 1), {})),
    ("a copy follows the first of its bytes", [(0, "a"), (1, "b"), (2, "a")], Extraction((0, 1), {2: 0})),
    ("the first that failed is left out: the next copy is extracted", [(1, "a"), (2, "a")], Extraction((1,), {2: 1})),
    ("a fallback from a failed earlier batch joins the copies of its bytes",
     [(0, "a"), (3, "a")], Extraction((0,), {3: 0})),
    ("nothing decoded", [], Extraction((), {})),
]


@pytest.mark.parametrize("what,decoded,expected", EXTRACTIONS, ids=[c[0] for c in EXTRACTIONS])
def test_extraction(what, decoded, expected):
    assert extraction(decoded) == expected
