"""The decoded crops of uploads this worker accepted, kept in memory for its own extractor."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from app.core.metrics import CROPS_DROPPED_EXPIRED, CROPS_ELSEWHERE, CROPS_NOT_KEPT


class RecentUploads:
    """The decoded crops of uploads accepted by this worker, by object key: an extractor in the
    same process takes the crop from here instead of fetching the object back from S3 and decoding
    it again (S3 stays the source of truth; a miss costs a GET and a decode). Bounded in bytes of
    pixels (150 KB per 224x224 crop, whatever the photo's size).

    When full, a new crop is not kept: the extractor reads its backlog oldest first, so making room
    by evicting the oldest crop would drop the very next one it needs, and a backlog longer than
    the cache would then miss on every image, just when the worker is busiest. A crop no extractor
    took within ``max_age_s`` is dropped (its event went to another worker, or was redelivered
    after a rebalance), so such crops cannot hold the room for good."""

    def __init__(self, max_bytes: int, max_age_s: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.size = 0
        self.items: OrderedDict[str, tuple[str, np.ndarray, float]] = OrderedDict()

    def put(self, key: str, backbone: str, pixels: np.ndarray, now: float | None = None) -> bool:
        """Keep ``pixels`` for ``key``; False (and not kept) when there is no room for them."""
        now = time.monotonic() if now is None else now
        while self.items:
            oldest_key, (_, _, made) = next(iter(self.items.items()))
            if now - made <= self.max_age_s:
                break
            self._take(oldest_key)
            CROPS_DROPPED_EXPIRED.inc()
        if self.size + pixels.nbytes > self.max_bytes:
            CROPS_NOT_KEPT.inc()
            return False
        self.items[key] = (backbone, pixels, now)
        self.size += pixels.nbytes
        return True

    def drop_elsewhere(self, key: str) -> None:
        """Drop ``key``'s crop: its event went to a partition another worker extracts."""
        if self._take(key) is not None:
            CROPS_ELSEWHERE.inc()

    def pop(self, key: str, backbone: str) -> np.ndarray | None:
        """The crop for ``key`` if it was made for ``backbone`` (a bundle swap may change it)."""
        item = self._take(key)
        return item[1] if item is not None and item[0] == backbone else None

    def _take(self, key: str) -> tuple[str, np.ndarray, float] | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.size -= item[1].nbytes
        return item
