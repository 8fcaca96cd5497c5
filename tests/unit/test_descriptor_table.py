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
