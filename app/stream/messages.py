"""What travels on each topic.

``images-input-stream``: ``ImageUploaded`` as compact JSON (about 200 bytes), keyed by sha256 so
the descriptor table is co-partitioned with it.

``image-features-stream``: a versioned binary payload, keyed by image id::

    byte 0       format version (1)
    bytes 1-16   image id (UUID, 16 bytes)
    bytes 17-    k float32 descriptors, little endian      -> 97 bytes for k = 20

Timings, the bundle version and whether a shadow bundle made the descriptors ride in Kafka
headers (``Trace``), so the payload stays small.

``images-dead-letter``: ``DeadLetter`` as JSON — the refusing stage, the reason, where the refused
message sat, and the image's ids when they could be read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from uuid import UUID

import msgspec
import numpy as np

from app.core.errors import Unprocessable

FORMAT_V1 = 1
_HEADER = struct.Struct("<B16s")


class ImageUploaded(msgspec.Struct, frozen=True):
    image_id: str
    object_key: str
    sha256: str
    size: int
    content_type: str
    uploaded_at: float  # epoch seconds, when the upload was accepted

    def dumps(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def loads(cls, raw: bytes) -> ImageUploaded:
        try:
            msg = msgspec.json.decode(raw, type=cls)
            UUID(msg.image_id)
            return msg
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise Unprocessable(f"malformed upload event: {exc}", code="malformed_message") from exc


class DeadLetter(msgspec.Struct, frozen=True):
    stage: str
    code: str
    reason: str
    topic: str
    partition: int
    offset: int
    failed_at: float
    image_id: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    uploaded_at: float | None = None
    original: bytes | None = None  # the refused message value (when it could not be parsed)

    def dumps(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def loads(cls, raw: bytes) -> DeadLetter:
        try:
            letter = msgspec.json.decode(raw, type=cls)
            if letter.image_id:
                UUID(letter.image_id)
            return letter
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise Unprocessable(f"malformed dead letter: {exc}", code="malformed_message") from exc


def encode_descriptors(image_id: UUID, descriptors: np.ndarray) -> bytes:
    return _HEADER.pack(FORMAT_V1, image_id.bytes) + np.asarray(descriptors, "<f4").tobytes()


def decode_descriptors(raw: bytes) -> tuple[UUID, np.ndarray]:
    if len(raw) < _HEADER.size + 4 or (len(raw) - _HEADER.size) % 4:
        raise Unprocessable(f"descriptor message of {len(raw)} bytes is malformed", code="malformed_message")
    version, uid = _HEADER.unpack_from(raw)
    if version != FORMAT_V1:
        raise Unprocessable(f"unknown descriptor format version {version}", code="malformed_message")
    return UUID(bytes=uid), np.frombuffer(raw, "<f4", offset=_HEADER.size)


@dataclass(frozen=True, slots=True)
class Trace:
    """Headers of a descriptor message: provenance and the timeline so far (epoch seconds)."""

    bundle_version: str
    uploaded_at: float
    extract_started_at: float
    extract_finished_at: float
    cached: bool
    shadow: bool = False  # made by a shadow bundle: stored, never served

    def headers(self) -> list[tuple[str, bytes]]:
        out = [("v", self.bundle_version.encode()), ("t", struct.pack("<3d", self.uploaded_at,
               self.extract_started_at, self.extract_finished_at)), ("c", b"1" if self.cached else b"0")]
        return [*out, ("r", b"shadow")] if self.shadow else out

    @classmethod
    def from_headers(cls, headers) -> Trace:
        h = dict(headers.items() if hasattr(headers, "items") else headers or [])
        try:
            up, start, end = struct.unpack("<3d", h["t"])
            return cls(h["v"].decode(), up, start, end, h.get("c") == b"1", h.get("r") == b"shadow")
        except (KeyError, struct.error, UnicodeDecodeError) as exc:
            raise Unprocessable("descriptor message without valid trace headers", code="malformed_message") from exc
