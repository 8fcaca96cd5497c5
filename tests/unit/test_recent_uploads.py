"""The cache of crops decoded at upload (``app.storage.crops.RecentUploads``): a backlog longer than the
cache still finds its oldest crops, and crops nobody takes cannot hold the room for good."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from app.core.metrics import REGISTRY
from app.storage.crops import RecentUploads
from tests.unit.inprocess import InProcessRuntime, app_for, settings, tiny_bundle

CROP = 224 * 224 * 3


def crop(value: int) -> np.ndarray:
    return np.full((224, 224, 3), value, np.uint8)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("imgstream_upload_crops_dropped_total", {"reason": reason})


def test_when_full_the_newest_crop_is_not_kept_and_the_backlog_keeps_its_oldest():
    cache, before = RecentUploads(3 * CROP), dropped("full")
    kept = [cache.put(f"k{i}", "b", crop(i), now=0.0) for i in range(5)]
    assert kept == [True, True, True, False, False] and cache.size == 3 * CROP
    assert dropped("full") - before == 2
    # the extractor reads oldest first: every crop it finds is one it needs next
    assert [int(cache.pop(f"k{i}", "b")[0, 0, 0]) for i in range(3)] == [0, 1, 2]
    assert cache.pop("k3", "b") is None and cache.size == 0
    assert cache.put("k5", "b", crop(5), now=1.0)  # room again once they are taken


def test_crops_nobody_took_within_the_age_limit_make_room():
    cache, before = RecentUploads(2 * CROP, max_age_s=60), dropped("expired")
    cache.put("old", "b", crop(1), now=0.0)
    cache.put("newer", "b", crop(2), now=30.0)
    assert not cache.put("k", "b", crop(3), now=59.0)  # full, nothing old enough yet
    assert cache.put("k", "b", crop(3), now=61.0)  # 'old' expired
    assert list(cache.items) == ["newer", "k"] and dropped("expired") - before == 1


def test_a_crop_for_another_backbone_is_not_handed_out():
    cache = RecentUploads(2 * CROP)
    cache.put("k", "resnet50", crop(1))
    assert cache.pop("k", "efficientnet_lite0") is None and cache.size == 0


def test_extracts_here_follows_the_input_partitions_this_worker_holds():
    s = settings(roles=("extractor",))
    rt = InProcessRuntime(app_for(s), s, tiny_bundle())

    def assigned(*tps):
        return SimpleNamespace(assignment=lambda: set(tps))

    rt.app.consumer = assigned(TP(s.input_topic, 1), TP(s.features_topic, 0))
    assert rt.extracts_here(1) and not rt.extracts_here(0)
    rt.app.consumer = assigned()  # before the first assignment: keep
    assert rt.extracts_here(0)

    def not_started():
        raise ConsumerNotStarted()

    rt.app.consumer = SimpleNamespace(assignment=not_started)
    assert rt.extracts_here(0)
