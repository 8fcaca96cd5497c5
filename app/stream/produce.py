"""Producing to Kafka and waiting for the broker's confirmation (acks=all)."""

from __future__ import annotations

import asyncio

import faust

from app.core.errors import ServiceUnavailable


class Producer:
    """Sends through the Faust app's producer; every upload and every extracted image passes here."""

    async def send(self, topic: faust.TopicT, key: bytes, value: bytes, headers=None, timeout: float = 15.0):
        """Produce and wait until the broker confirms (acks=all); returns the record's metadata
        (partition, offset). ServiceUnavailable otherwise."""
        return (await self.send_many(topic, [(key, value, headers)], timeout))[0]

    async def send_many(self, topic: faust.TopicT, records, timeout: float = 15.0) -> list:
        """Produce ``(key, value, headers)`` records in their order, then wait until the broker
        confirms every one (acks=all); their metadata in the same order. ServiceUnavailable
        otherwise. One deadline for all, and no task per record (``asyncio.wait_for`` and a
        ``gather`` of coroutines each make one)."""
        try:
            async with asyncio.timeout(timeout):
                confirmations = [await topic.send(key=key, value=value, headers=headers)
                                 for key, value, headers in records]
                return await asyncio.gather(*confirmations)
        except Exception as exc:  # noqa: BLE001 - any produce failure means "not confirmed"
            raise ServiceUnavailable(f"kafka unavailable: {type(exc).__name__}") from exc
