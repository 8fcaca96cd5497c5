"""One error hierarchy for all of imgstream.

Every error carries an HTTP status and a stable machine-readable ``code``; the ``errors``
middleware in ``app.views.api`` maps any of them to ``{"error": {"code": ..., "message": ...}}`` in
one place. Agents use the same classes (``agents/policy.py``): ``ServiceUnavailable`` is an outage,
retried without limit; a refusal such as ``Unprocessable`` goes to the dead-letter topic.
"""

from __future__ import annotations


class ImgstreamError(Exception):
    """Root of every error imgstream raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ImgstreamError):
    status, code = 400, "bad_request"


class Unauthorized(ImgstreamError):
    status, code = 401, "unauthorized"


class NotFound(ImgstreamError):
    status, code = 404, "not_found"


class PayloadTooLarge(ImgstreamError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ImgstreamError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ImgstreamError):
    status, code = 422, "unprocessable"


class InvalidImage(Unprocessable):
    """The bytes are not a decodable JPEG, PNG or WebP image (refused, or dead-lettered)."""

    code = "invalid_image"


class TooManyPixels(PayloadTooLarge):
    """Declared image size above the pixel limit: a possible decompression bomb."""

    code = "too_many_pixels"


class ServiceUnavailable(ImgstreamError):
    """A dependency (Kafka, S3, PostgreSQL, the model bundle) is down; the client may retry."""

    status, code = 503, "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ModelError(ImgstreamError):
    """A model bundle is missing, incomplete or inconsistent."""

    status, code = 503, "model_unavailable"


class StackError(ImgstreamError):
    """A local service of `imgstream stack` failed to install or start."""

    code = "stack_error"
