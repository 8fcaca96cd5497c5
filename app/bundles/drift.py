"""The drift of the serving bundle's recent descriptors, in memory (models/drift.py against the
bundle's training statistics)."""

from __future__ import annotations

from collections import deque

import numpy as np

from models import drift


class DriftMonitor:
    """A window of the last ``size`` serving descriptors; the score is reported once ``minimum``
    of them arrived. A new serving bundle (another descriptor space) starts a new window."""

    def __init__(self, size: int, minimum: int) -> None:
        self.size, self.minimum = size, minimum
        self.version: str | None = None
        self.reference: dict | None = None
        self._rows: deque[np.ndarray] = deque(maxlen=size)

    @property
    def images(self) -> int:
        return len(self._rows)

    def add(self, bundle, descriptors: np.ndarray) -> None:
        if bundle.version != self.version:
            self.version, self.reference = bundle.version, bundle.manifest.get("descriptor_stats")
            self._rows.clear()
        if self.reference is not None:
            self._rows.extend(np.asarray(descriptors, np.float32).reshape(-1, bundle.k))

    def score(self) -> dict | None:
        """{bundle, images, psi (per descriptor), psi_max, alert}; None until there is enough (or
        when the bundle carries no training statistics: bundles made before they were kept)."""
        if self.reference is None or self.images < self.minimum:
            return None
        values = drift.psi(self.reference, np.stack(self._rows))
        return {"bundle": self.version, "images": self.images, "psi": [round(float(v), 4) for v in values],
                "psi_max": round(float(values.max()), 4), "alert": drift.ALERT}
