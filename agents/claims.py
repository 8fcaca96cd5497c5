"""What extractor batches in flight (IMGSTREAM_EXTRACT_PIPELINE_DEPTH) will extract, so that a
later batch with the same bytes and bundle waits for those descriptors instead of running the
backbone again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import numpy as np


class _InFlight:
    def __init__(self, futures: dict, version: str) -> None:
        self._futures, self._version = futures, version

    def __contains__(self, sha256: object) -> bool:
        return (sha256, self._version) in self._futures


class Claims:
    """(sha256, bundle version) -> the future descriptors of the batch that extracts them.

    A batch claims its bytes right after its table look-ups, with no await in between, so a batch
    started later sees them; it fulfils each claim as soon as it has the descriptors and releases
    them all when it ends. A claim released unfulfilled (the batch failed or stopped) is cancelled,
    and whoever waited on it extracts for itself."""

    def __init__(self) -> None:
        self._futures: dict[tuple[str, str], asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._futures)

    def in_flight(self, version: str) -> _InFlight:
        """The bytes claimed for ``version``, as a container of sha256s."""
        return _InFlight(self._futures, version)

    def claim(self, shas: Iterable[str], version: str) -> dict[str, asyncio.Future]:
        loop = asyncio.get_running_loop()
        mine = {}
        for sha in shas:
            mine[sha] = self._futures[(sha, version)] = loop.create_future()
        return mine

    def of(self, sha256: str, version: str) -> asyncio.Future:
        """The claim of an earlier batch (``sha256`` in ``in_flight(version)``)."""
        return self._futures[(sha256, version)]

    @staticmethod
    def fulfil(mine: dict[str, asyncio.Future], sha256: str, descriptors: np.ndarray) -> None:
        claim = mine.get(sha256)
        if claim is not None and not claim.done():
            claim.set_result(descriptors)

    def release(self, mine: dict[str, asyncio.Future], version: str) -> None:
        for sha, future in mine.items():
            if self._futures.get((sha, version)) is future:
                del self._futures[(sha, version)]
            if not future.done():  # this batch failed or stopped: whoever joined extracts for itself
                future.cancel()
