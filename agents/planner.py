"""The extractor's batch plan, as pure functions over plain data: which uploads of a micro-batch
the descriptor table answers, which an earlier batch still in flight answers, which this batch
fetches and decodes, and, once decoded, which are extracted and which in-batch copies of the same
bytes follow them. The agent (agents/extractor.py) does the I/O around it."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID


class TableEntry(Protocol):
    """What the plan reads of a descriptor table entry (tables/descriptors.Entry)."""

    bundle_version: str
    image_id: UUID | None

    def expired(self, now: float, ttl_s: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Upload:
    sha256: str
    image_id: UUID


@dataclass(frozen=True, slots=True)
class Plan:
    table: tuple[int, ...]  # answered by the descriptor table
    earlier: tuple[int, ...]  # answered by an earlier batch in flight that extracts the same bytes
    own: tuple[int, ...]  # fetched and decoded here (in batch order)
    claims: tuple[str, ...]  # the bytes this batch extracts, for the batches after it to join


def plan(uploads: Sequence[Upload], hits: Sequence[TableEntry | None], version: str,
         in_flight: Container[str], now: float, ttl_s: float) -> Plan:
    """``hits``: the table's entry for each upload's bytes (None: none); ``in_flight``: the bytes an
    earlier batch in flight extracts with bundle ``version``.

    The table answers repeats of the same bytes with the same bundle, and a redelivered event
    (same image id) gets the answer it already had, whatever bundle made it: a worker restarted on
    a newer bundle never gives one upload two answers. An expired entry answers nothing."""
    table, earlier, own, claims = [], [], [], []
    mine: set[str] = set()
    for i, (upload, hit) in enumerate(zip(uploads, hits, strict=True)):
        if hit is not None and not hit.expired(now, ttl_s) and (
                hit.bundle_version == version or hit.image_id == upload.image_id):
            table.append(i)
        elif upload.sha256 not in mine and upload.sha256 in in_flight:
            earlier.append(i)
        else:
            if upload.sha256 not in mine:
                mine.add(upload.sha256)
                claims.append(upload.sha256)
            own.append(i)
    return Plan(tuple(table), tuple(earlier), tuple(own), tuple(claims))


@dataclass(frozen=True, slots=True)
class Extraction:
    first: tuple[int, ...]  # extracted: the first decoded upload of its bytes
    copies: dict[int, int]  # an in-batch copy of the same bytes -> the upload it takes its descriptors from


def extraction(decoded: Sequence[tuple[int, str]]) -> Extraction:
    """``decoded``: (index, sha256) of the uploads decoded here, in the order they were planned
    (those that were dead-lettered or answered by an earlier batch left out). The backbone runs
    once per bytes: the first of each is extracted, the others copy it."""
    first: dict[str, int] = {}
    copies: dict[int, int] = {}
    for index, sha256 in decoded:
        if sha256 in first:
            copies[index] = first[sha256]
        else:
            first[sha256] = index
    return Extraction(tuple(first.values()), copies)
