"""The local stack's pieces that need no service running."""

import base64
import errno
import uuid

from tools.stack.services import kafka_cluster_id, metadata_store


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


def test_the_s3_store_keeps_metadata_in_xattrs_where_the_filesystem_takes_them(tmp_path):
    calls = []
    mode = metadata_store(tmp_path / "s3", probe=lambda *args: calls.append(args))
    assert mode == "xattr" and len(calls) == 1
    assert (tmp_path / "s3" / "metadata").read_text().strip() == "xattr"
    assert sorted(p.name for p in (tmp_path / "s3").iterdir()) == ["metadata"]  # the probe file is gone


def test_the_s3_store_falls_back_to_sidecar_files_without_xattrs(tmp_path):
    def refuse(*_):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    assert metadata_store(tmp_path / "s3", probe=refuse) == "sidecar"
    assert metadata_store(tmp_path / "s3") == "sidecar"  # kept, not probed again


def test_an_existing_sidecar_store_keeps_its_mode(tmp_path):
    # a store made before the mode was recorded has its metadata in meta/: xattrs would lose it
    (tmp_path / "s3" / "meta").mkdir(parents=True)
    assert metadata_store(tmp_path / "s3", probe=lambda *args: None) == "sidecar"


def test_with_a_cluster_the_single_broker_is_never_selected_and_kafka_alone_selects_nothing_else():
    from app.core.settings import Settings
    from tools.stack.services import _others

    s = Settings(_env_file=None)
    assert [svc.name for svc in _others(s, None, 3)] == ["postgres", "s3"]
    assert _others(s, ["kafka"], 3) == []
    assert [svc.name for svc in _others(s, ["kafka"], 1)] == ["kafka"]
