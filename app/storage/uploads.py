"""Upload rows PostgreSQL could not take when the upload was accepted, written as soon as it answers."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from app.core.backoff import Backoff
from app.core.metrics import UNRECORDED
from app.storage.database import Database, UploadRecord

log = logging.getLogger("imgstream.uploads")


class UploadRecorder:
    """A queue of accepted uploads whose row is not in PostgreSQL yet, written in order with back-off:
    the sweeper (the backstop) only sees images that have their row. Their predictions do not wait
    for it: they arrive through Kafka."""

    def __init__(self, db: Database, base_s: float = 0.5, cap_s: float = 10.0) -> None:
        self.db = db
        self.base_s, self.cap_s = base_s, cap_s
        self.pending: deque[UploadRecord] = deque()
        self._task: asyncio.Task | None = None

    def record_later(self, record: UploadRecord) -> None:
        self.pending.append(record)
        UNRECORDED.set(len(self.pending))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write_pending(), name="record-uploads")

    async def _write_pending(self) -> None:
        backoff = Backoff(self.base_s, self.cap_s)
        while self.pending:
            try:
                await self.db.record_upload(self.pending[0])
                self.pending.popleft()
                UNRECORDED.set(len(self.pending))
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the database is away: try again
                UNRECORDED.set(len(self.pending))
                log.warning("%d accepted upload(s) not yet recorded in PostgreSQL (%s); retrying in %.1fs",
                            len(self.pending), type(exc).__name__, backoff.delay)
                await backoff.wait()

    def stop(self) -> None:
        if self.pending:
            log.error("stopping with %d accepted upload(s) not recorded in PostgreSQL (their predictions "
                      "still arrive through Kafka; the sweeper cannot see them)", len(self.pending))
        if self._task is not None:
            self._task.cancel()
