"""One error hierarchy for all of imgstream.

Every error carries an HTTP status and a stable machine-readable ``code``; the ``errors``
middleware in ``app.http.api`` maps any of them to ``{"error": {"code": ..., "message": ...}}`` in
one place. Agents use the same classes (``app/stream/policy.py``): ``ServiceUnavailable`` is an outage,
retried without limit; a refusal such as ``Unprocessable`` goes to the dead-letter topic.

The root and the errors the model code raises live in ``models/errors.py`` (``models/`` imports
nothing from the worker); this module re-exports them beside the worker's own.
"""

from __future__ import annotations

from models.errors import (  # noqa: F401 - re-exported: the one hierarchy is read from here
    DataError,
    ImgstreamError,
    InvalidImage,
    ModelError,
    PayloadTooLarge,
    TooManyPixels,
    Unprocessable,
)


class BadRequest(ImgstreamError):
    status, code = 400, "bad_request"


class Unauthorized(ImgstreamError):
    status, code = 401, "unauthorized"


class Forbidden(ImgstreamError):
    status, code = 403, "forbidden"


class NotFound(ImgstreamError):
    status, code = 404, "not_found"


class UnsupportedMediaType(ImgstreamError):
    status, code = 415, "unsupported_media_type"


class ServiceUnavailable(ImgstreamError):
    """A dependency (Kafka, S3, PostgreSQL, the model bundle) is down; the client may retry."""

    status, code = 503, "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
