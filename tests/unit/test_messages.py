import uuid

import numpy as np
import pytest

from app.core.errors import Unprocessable
from app.stream.messages import ImageUploaded, Trace, decode_descriptors, encode_descriptors


def test_descriptor_message_is_at_most_100_bytes_for_k20_and_round_trips():
    image_id = uuid.uuid4()
    desc = np.random.default_rng(0).normal(size=20).astype(np.float32)
    raw = encode_descriptors(image_id, desc)
    assert len(raw) == 97
    got_id, got = decode_descriptors(raw)
    assert got_id == image_id
    np.testing.assert_array_equal(got, desc)


@pytest.mark.parametrize("raw", [b"", b"\x01" + b"x" * 16, b"\x02" + b"x" * 16 + b"\0" * 80, b"\x01" + b"x" * 17])
def test_malformed_descriptor_messages_are_refused(raw):
    with pytest.raises(Unprocessable):
        decode_descriptors(raw)


def test_upload_event_is_small_json_and_validated():
    msg = ImageUploaded(str(uuid.uuid4()), "raw-images/2026/01/01/x.jpg", "ab" * 32, 1234, "image/jpeg", 1.7e9)
    raw = msg.dumps()
    assert len(raw) < 260
    assert ImageUploaded.loads(raw) == msg
    for bad in (b"{", b"[]", b'{"image_id": "not-a-uuid"}', raw.replace(b'"size":1234', b'"size":"x"')):
        with pytest.raises(Unprocessable):
            ImageUploaded.loads(bad)


def test_trace_headers_round_trip():
    t = Trace("v1", 1.0, 2.0, 3.5, True)
    assert Trace.from_headers(t.headers()) == t
    with pytest.raises(Unprocessable):
        Trace.from_headers([("v", b"v1")])
