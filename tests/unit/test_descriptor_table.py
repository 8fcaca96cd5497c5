import struct
import uuid

import numpy as np

from tables.descriptors import pack, unpack


def test_entry_round_trip_with_the_image_that_wrote_it():
    image_id = uuid.uuid4()
    d = np.arange(20, dtype=np.float32)
    entry = unpack(pack("20261126-095914-eff20", d, image_id))
    assert entry.bundle_version == "20261126-095914-eff20" and entry.image_id == image_id
    assert np.array_equal(entry.descriptors, d)
    assert unpack(pack("v", d)).image_id is None


def test_entries_written_before_the_image_id_still_read():
    d = np.linspace(-1, 1, 20, dtype=np.float32)
    old = struct.pack("<B", 2) + b"v1" + d.astype("<f4").tobytes()
    entry = unpack(old)
    assert entry.bundle_version == "v1" and entry.image_id is None and np.array_equal(entry.descriptors, d)


def test_entry_remembers_when_and_where_it_was_written():
    d = np.ones(20, np.float32)
    entry = unpack(pack("v2", d, uuid.uuid4(), partition=3, written_at=1000.0))
    assert (entry.partition, entry.written_at, entry.bundle_version) == (3, 1000.0, "v2")
    assert np.array_equal(entry.descriptors, d)
    assert not entry.expired(now=1000.0 + 59, ttl_s=60) and entry.expired(now=1000.0 + 60, ttl_s=60)
    assert not entry.expired(now=1e12, ttl_s=0)  # 0: keep forever
    legacy = unpack(struct.pack("<B", 1) + b"v" + d.tobytes())
    assert not legacy.expired(now=1e12, ttl_s=60)  # no timestamp: never expires
