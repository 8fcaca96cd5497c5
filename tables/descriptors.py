"""The descriptor cache: sha256 of the image bytes -> (bundle version, k float32 descriptors, the
image id whose extraction wrote it, when, and in which partition).

Keyed like ``images-input-stream`` (by sha256) and with the same partition count, so each
extractor reads and writes only the keys of the partitions it owns; a re-upload of the same bytes
is answered from here and never extracted twice. Backed by ``<app_id>-descriptors-changelog``
(compacted). In workers the store is RocksDB on local disk: memory stays bounded by its caches
whatever the number of images, and a restarted worker (or a standby taking over) replays only
the changelog's tail. Entries live ``descriptor_ttl_s`` after their extraction: ``expire`` deletes
older ones locally and with a tombstone in the changelog, so compaction drops them there too.
"""

from __future__ import annotations

import asyncio
import struct
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import faust
import numpy as np
from faust.streams import _current_event
from faust.types import TP

from app.core.metrics import TABLE_ENTRIES, TABLE_EXPIRED, TABLE_MEMORY
from app.core.settings import Settings

TABLE_NAME = "descriptors"

# RocksDB memory per table partition besides the block cache: two 2 MB memtables. Faust's default
# is three of 64 MB (up to 768 MB for four partitions before the first flush); the table takes a
# few hundred writes a second at most, so small memtables cost nothing and keep a worker's memory
# flat within minutes instead of growing for hours until the first flush.
_WRITE_BUFFER_BYTES = 2 << 20
_WRITE_BUFFERS = 2
# Bloom filter bits per key. Almost every lookup is for bytes never seen (a new upload); with
# Faust's default of 3 bits about a third of them read a data block anyway, which filled the block
# cache with random blocks until its cap (measured: the cache grew by the size of everything
# written). With 10 bits about 1 % do.
_BLOOM_BITS = 10
# What RocksDB reports of its own memory, per kind (summed over this worker's partitions).
_MEMORY_PROPERTIES = {"memtables": "rocksdb.cur-size-all-mem-tables", "block_cache": "rocksdb.block-cache-usage",
                      "table_readers": "rocksdb.estimate-table-readers-mem"}


def declare(app: faust.App, settings: Settings) -> faust.Table:
    options = None
    if settings.table_store == "rocksdb":
        options = {
            "write_buffer_size": _WRITE_BUFFER_BYTES,
            "max_write_buffer_number": _WRITE_BUFFERS,
            "block_cache_size": settings.table_cache_mb << 20,
            "bloom_filter_size": _BLOOM_BITS,
            "driver": "rocksdict",
        }
    return app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.topic_partitions,
        key_type=str,
        value_type=bytes,
        options=options,
        changelog_topic=app.topic(
            settings.descriptor_changelog_topic,
            partitions=settings.topic_partitions,
            compacting=True,
            key_serializer="json",
            value_serializer="raw",
            config={"min.insync.replicas": str(settings.kafka_min_insync_replicas)},
        ),
        help="sha256 -> (bundle version, descriptors, image id, written at, partition)",
    )


# Entry layouts, told apart by the first byte: the current one (0xFE) with when and where it was
# written; 0xFF with the image id; the first one (the length of the bundle version, < 254).
_CURRENT = 0xFE
_WITH_IMAGE = 0xFF
_HEAD = struct.Struct("<BHdB")  # marker, partition, written_at (unix seconds), len(version)


@dataclass(frozen=True, slots=True)
class Entry:
    bundle_version: str
    descriptors: np.ndarray
    image_id: UUID | None  # the upload whose extraction wrote the entry (None in older entries)
    written_at: float | None = None  # None in entries older than the expiry (never expire)
    partition: int | None = None

    def expired(self, now: float, ttl_s: float) -> bool:
        return bool(ttl_s) and self.written_at is not None and now - self.written_at >= ttl_s


def pack(bundle_version: str, descriptors: np.ndarray, image_id: UUID | None = None, *,
         partition: int = 0, written_at: float | None = None) -> bytes:
    v = bundle_version.encode()
    return (_HEAD.pack(_CURRENT, partition, time.time() if written_at is None else written_at, len(v)) + v
            + (image_id.bytes if image_id else bytes(16)) + np.asarray(descriptors, "<f4").tobytes())


def unpack(raw: bytes) -> Entry:
    if raw[0] == _CURRENT:
        _, partition, written_at, n = _HEAD.unpack_from(raw)
        o = _HEAD.size
        uid = raw[o + n : o + n + 16]
        return Entry(raw[o : o + n].decode(), np.frombuffer(raw, "<f4", offset=o + n + 16),
                     UUID(bytes=uid) if any(uid) else None, written_at, partition)
    if raw[0] == _WITH_IMAGE:
        n = raw[1]
        uid = raw[2 + n : 18 + n]
        return Entry(raw[2 : 2 + n].decode(), np.frombuffer(raw, "<f4", offset=18 + n),
                     UUID(bytes=uid) if any(uid) else None)
    n = raw[0]
    return Entry(raw[1 : 1 + n].decode(), np.frombuffer(raw, "<f4", offset=1 + n), None)


def _written(raw: bytes) -> tuple[int, float] | None:
    """(partition, written_at) of an entry without decoding the rest; None for older layouts."""
    if raw[0] != _CURRENT:
        return None
    _, partition, written_at, _ = _HEAD.unpack_from(raw)
    return partition, written_at


def _local_entries(table, partitions: set[int]) -> Iterator[tuple[object, bytes]]:
    """(store key, value) of every entry of ``partitions`` this worker holds."""
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is not None:  # RocksDB: one database per partition, keys stored serialized
        import rocksdict

        scan = rocksdict.ReadOptions()
        scan.fill_cache(False)  # a full pass must not evict the blocks lookups keep warm, nor grow the cache
        for partition, db in list(dbs.items()):
            if partition in partitions:
                yield from ((k, v) for k, v in db.items(read_opt=scan) if k != store.offset_key)
    else:  # memory: one dict, keys as given
        yield from list(store.data.items())


async def expire(table, partitions: set[int], ttl_s: float, *, now: float | None = None,
                 chunk: int = 5000) -> int:
    """Delete the entries of ``partitions`` (the table partitions this worker owns) written more
    than ``ttl_s`` ago, locally and with a tombstone in their changelog partition; returns how
    many. Yields to the event loop every ``chunk`` entries."""
    now = time.time() if now is None else now
    store, topic = table.data, table.changelog_topic
    rocks = hasattr(store, "_dbs")
    seen = removed = 0
    for key, raw in _local_entries(table, partitions):
        seen += 1
        if seen % chunk == 0:
            await asyncio.sleep(0)
        head = _written(raw) if raw else None
        if head is None or now - head[1] < ttl_s or head[0] not in partitions:
            continue
        if rocks:
            store._del(key)
            key = store._decode_key(key)
        else:
            store.data.pop(key, None)
        # send_soon keeps the order of the table's own writes: a tombstone never overtakes a
        # newer value of the same key sent before it.
        topic.send_soon(key=key, value=None, partition=head[0])
        removed += 1
    TABLE_ENTRIES.set(seen - removed)
    TABLE_EXPIRED.inc(removed)
    return removed


def report_memory(table) -> dict[str, int]:
    """RocksDB's own account of its memory (memtables, block cache, table readers) over the
    partitions this worker has open, also set as a gauge; empty for the memory store."""
    dbs = list(getattr(table.data, "_dbs", {}).values())
    if not dbs:
        return {}
    out = {kind: sum(db.property_int_value(prop) or 0 for db in dbs) for kind, prop in _MEMORY_PROPERTIES.items()}
    for kind, value in out.items():
        TABLE_MEMORY.labels(kind).set(value)
    return out


def owned_partitions(app: faust.App, table) -> set[int]:
    changelog = table.changelog_topic.get_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog}


@contextmanager
def event_context(event):
    """Make ``event`` the current event while writing the table.

    Faust sends a table's changelog record to the partition of the *current* event. Inside a
    ``take_events`` batch that would be whichever event came last, so a write for a key of another
    partition would land in the wrong changelog partition and be lost on recovery.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
