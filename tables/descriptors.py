"""The descriptor cache: sha256 of the image bytes -> (bundle version, k float32 descriptors, the
image id whose extraction wrote it).

Keyed like ``images-input-stream`` (by sha256) and with the same partition count, so each
extractor reads and writes only the keys of the partitions it owns; a re-upload of the same bytes
is answered from here and never extracted twice. Backed by ``<app_id>-descriptors-changelog``
(compacted), restored on worker start or rebalance.
"""

from __future__ import annotations

import struct
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import faust
import numpy as np
from faust.streams import _current_event

from app.settings import Settings

TABLE_NAME = "descriptors"


def declare(app: faust.App, settings: Settings) -> faust.Table:
    return app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.topic_partitions,
        key_type=str,
        value_type=bytes,
        changelog_topic=app.topic(
            f"{settings.app_id}-{TABLE_NAME}-changelog",
            partitions=settings.topic_partitions,
            compacting=True,
            key_serializer="json",
            value_serializer="raw",
        ),
        help="sha256 -> (bundle version, descriptors, image id of the extraction)",
    )


# Entries written since the table remembers which upload was extracted: a marker byte that no
# older entry starts with (those start with the length of a bundle version, always < 255).
_WITH_IMAGE = 0xFF


@dataclass(frozen=True, slots=True)
class Entry:
    bundle_version: str
    descriptors: np.ndarray
    image_id: UUID | None  # the upload whose extraction wrote the entry (None in older entries)


def pack(bundle_version: str, descriptors: np.ndarray, image_id: UUID | None = None) -> bytes:
    v = bundle_version.encode()
    return (struct.pack("<BB", _WITH_IMAGE, len(v)) + v + (image_id.bytes if image_id else bytes(16))
            + np.asarray(descriptors, "<f4").tobytes())


def unpack(raw: bytes) -> Entry:
    if raw[0] != _WITH_IMAGE:
        n = raw[0]
        return Entry(raw[1 : 1 + n].decode(), np.frombuffer(raw, "<f4", offset=1 + n), None)
    n = raw[1]
    uid = raw[2 + n : 18 + n]
    return Entry(raw[2 : 2 + n].decode(), np.frombuffer(raw, "<f4", offset=18 + n),
                 UUID(bytes=uid) if any(uid) else None)


@contextmanager
def event_context(event):
    """Make ``event`` the current event while writing the table.

    Faust sends a table's changelog record to the partition of the *current* event. Inside a
    ``take_events`` batch that would be whichever event came last, so a write for a key of another
    partition would land in the wrong changelog partition and be lost on recovery.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
