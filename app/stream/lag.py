"""The consumer groups' lag on the three topics, sampled for the ``imgstream_consumer_lag`` gauge."""

from __future__ import annotations

import asyncio
import logging

from app.core.metrics import CONSUMER_LAG
from app.core.settings import Settings
from app.stream import broker

log = logging.getLogger("imgstream.lag")


class LagSampler:
    def __init__(self, settings: Settings, group_id: str, every_s: float = 5.0) -> None:
        self.settings, self.group_id, self.every_s = settings, group_id, every_s
        self.topics = [settings.input_topic, settings.features_topic, settings.dead_letter_topic]
        self._task: asyncio.Task | None = None

    async def sample(self) -> None:
        lag = await broker.consumer_lag(self.settings, self.group_id, self.topics)
        for (topic, partition), value in lag.items():
            CONSUMER_LAG.labels(topic, str(partition)).set(value)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sample()
            except Exception as exc:  # noqa: BLE001 - metrics must never take the worker down
                log.debug("consumer lag unavailable: %s", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="consumer-lag")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
