"""A short history, in memory, of the figures the dashboard charts that PostgreSQL does not hold
(consumer lag, drift)."""

from __future__ import annotations

import time
from collections import deque


class History:
    """Samples of a few figures every ``every`` seconds, the last ``keep`` of them."""

    def __init__(self, keep: int = 360) -> None:
        self.samples: deque[dict] = deque(maxlen=keep)

    def add(self, **values: float | None) -> None:
        self.samples.append({"t": time.time(), **values})

    def since(self, seconds: float) -> list[dict]:
        start = time.time() - seconds
        return [s for s in self.samples if s["t"] >= start]
