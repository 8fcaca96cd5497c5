"""The root of imgstream's one error hierarchy and the errors the model code raises (a bad image,
a bad bundle). ``app/core/errors.py`` re-exports them beside the worker's own errors."""

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


class PayloadTooLarge(ImgstreamError):
    status, code = 413, "payload_too_large"


class Unprocessable(ImgstreamError):
    status, code = 422, "unprocessable"


class InvalidImage(Unprocessable):
    """The bytes are not a decodable JPEG, PNG or WebP image (refused, or dead-lettered)."""

    code = "invalid_image"


class TooManyPixels(PayloadTooLarge):
    """Declared image size above the pixel limit: a possible decompression bomb."""

    code = "too_many_pixels"


class ModelError(ImgstreamError):
    """A model bundle is missing, incomplete or inconsistent."""

    status, code = 503, "model_unavailable"


class DataError(ImgstreamError):
    """Labelled images given to training or evaluation do not fit: no images where they were
    looked for, or classes the bundle does not know."""

    status, code = 400, "bad_data"
