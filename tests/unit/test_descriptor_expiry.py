"""Expiry of the descriptor table on both stores, in process: entries older than the TTL leave
the store and get a tombstone in their own changelog partition; younger ones stay."""

import asyncio
import uuid
import numpy as np
import pytest

import faust
from app.core.settings import Settings
from tables import descriptors


class _Message:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class _Event:  # what the stores read of the current event: its message's partition
    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


@pytest.fixture(params=["memory", "rocksdb"])
def table(request, tmp_path):
    settings = Settings(app_id=f"expiry-{request.param}", table_store=request.param, _env_file=None)
    app = faust.App(settings.app_id, store=f"{request.param}://", tabledir=str(tmp_path / "tables"),
                    datadir=str(tmp_path / "data"), autodiscover=False)
    table = descriptors.declare(app, settings)
    sent = []
    table.changelog_topic.send_soon = lambda **kw: sent.append(kw)
    table.sent = sent
    return table


def _put(table, partition: int, key: str, written_at: float) -> None:
    event = _Event(partition)
    value = descriptors.pack("v1", np.zeros(20, np.float32), uuid.uuid4(), partition=partition, written_at=written_at)
    with descriptors.event_context(event):
        table.data[key] = value
    del event


def _get(table, partition: int, key: str):
    event = _Event(partition)
    with descriptors.event_context(event):
        return table.data.get(key)


def test_expired_entries_leave_the_store_with_a_tombstone_in_their_partition(table):
    now = 10_000.0
    _put(table, 0, "old-0", now - 120)
    _put(table, 1, "old-1", now - 61)
    _put(table, 1, "young-1", now - 10)
    _put(table, 2, "old-but-not-ours", now - 500)
    removed = asyncio.run(descriptors.expire(table, {0, 1}, ttl_s=60, now=now, chunk=2))
    assert removed == 2
    assert sorted((s["key"], s["partition"], s["value"]) for s in table.sent) == [("old-0", 0, None), ("old-1", 1, None)]
    assert _get(table, 0, "old-0") is None and _get(table, 1, "old-1") is None
    assert _get(table, 1, "young-1") is not None
    assert _get(table, 2, "old-but-not-ours") is not None  # another worker's partition: its owner expires it


def test_lookups_read_the_partition_of_their_own_event(table):
    _put(table, 3, "k", 1.0)
    assert descriptors.unpack(_get(table, 3, "k")).partition == 3


def test_rocksdb_reports_its_own_memory(table):
    _put(table, 0, "k", 1.0)
    memory = descriptors.report_memory(table)
    if hasattr(table.data, "_dbs"):
        assert set(memory) == {"memtables", "block_cache", "table_readers"} and memory["memtables"] > 0
    else:
        assert memory == {}
