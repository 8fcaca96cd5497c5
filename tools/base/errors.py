"""The tooling's error, in imgstream's one hierarchy."""

from __future__ import annotations

from app.core.errors import ImgstreamError


class ToolingError(ImgstreamError):
    """A local service of `imgstream stack`, or the export environment, failed to install or start."""

    code = "tooling_error"
