"""A worker whose consumer holds still for IMGSTREAM_TEST_SEEK_DELAY_S seconds after it seeks to
the committed offsets on a rebalance: the window in which unpatched Faust lets records be fetched
and then cleared (app/stream/faust_patches.py, fix 1). It makes that race deterministic on a real
broker. Run in place of the CLI:

    IMGSTREAM_TEST_SEEK_DELAY_S=3 python -m tests.seek_window worker -l info
"""

from __future__ import annotations

import asyncio
import os

from app.stream.faust_app import ImgstreamApp


def widen_seek_window(consumer, delay_s: float) -> None:
    original = consumer.seek_to_committed

    async def seek_to_committed():
        committed = await original()
        await asyncio.sleep(delay_s)
        return committed

    consumer.seek_to_committed = seek_to_committed


def install(delay_s: float) -> None:
    """Every consumer the worker's Faust app builds from now on waits ``delay_s`` after its seeks."""
    new_consumer = ImgstreamApp._new_consumer

    def _new_consumer(self):
        consumer = new_consumer(self)
        widen_seek_window(consumer, delay_s)
        return consumer

    ImgstreamApp._new_consumer = _new_consumer


if __name__ == "__main__":
    install(float(os.environ.get("IMGSTREAM_TEST_SEEK_DELAY_S", "3")))
    from app.ops.cli import main

    main()
