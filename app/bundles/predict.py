"""A bundle's predictions for a batch of descriptors, as the rows PostgreSQL stores: shared by the
classifier agents and ``imgstream replay``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from app.core.metrics import PREDICT_SECONDS
from app.core.threads import Pool
from app.storage.database import PredictionRow
from models.bundle import Bundle


async def predict_rows(bundle: Bundle, pool: Pool, names: Sequence[str], ids: list, x: np.ndarray) -> list[PredictionRow]:
    """One call off the event loop runs each classifier of ``names`` on a batch -> rows tagged with
    the bundle's version. Shared by the classifier agents and ``imgstream replay``."""
    version = bundle.version

    def predict() -> list[tuple[str, np.ndarray, float]]:
        out = []
        for name in names:
            started = time.perf_counter()
            out.append((name, bundle.predict(name, x), time.perf_counter() - started))
        return out

    rows = []
    labels = bundle.labels
    for name, probs, predict_s in await pool.run(predict):
        PREDICT_SECONDS.labels(name, version).observe(predict_s / len(ids))
        latency_ms = 1000 * predict_s / len(ids)
        # whole-array conversions: one call each instead of one per row and probability
        rows += [PredictionRow(image_id, name, version, labels[best], confidence, p, latency_ms)
                 for image_id, best, confidence, p in zip(ids, probs.argmax(1).tolist(), probs.max(1).tolist(),
                                                          probs.tolist(), strict=True)]
    return rows
