"""The one retry schedule of the worker: exponential backoff from ``base`` to ``cap`` seconds.

Every loop that waits for a dependency to come back (app/stream/policy.py's outages and failing
batches, the bundle loader, the upload recorder) sleeps through a ``Backoff``, so how the worker
waits is decided here and nowhere else.
"""

from __future__ import annotations

import asyncio


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 10.0) -> None:
        self.base, self.cap = base, cap
        self.delay = base  # what the next ``wait`` sleeps (for the log line before it)

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.base
