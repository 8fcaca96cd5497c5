"""The local stack's pieces that need no service running."""

import base64
import uuid

from tools.stack.services import kafka_cluster_id


def test_a_cluster_id_never_starts_with_a_dash():
    # 0xF8 opens with the six bits 111110, base64's 62nd symbol: '-' in the URL-safe alphabet.
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    drawn = iter([dashed, dashed, plain])
    cluster_id = kafka_cluster_id(lambda: next(drawn))
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
    assert next(drawn, None) is None


def test_cluster_ids_are_random_and_kafka_shaped():
    ids = {kafka_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
