"""imgstream: upload -> S3 -> images-input-stream -> extractor -> image-features-stream -> classifiers -> PostgreSQL.

``app.app`` is the Faust application (built on first access, so importing ``app.settings`` or the
CLI does not build it); ``faust -A app worker`` and ``python -m app worker`` both find it.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "app":
        from app.faust_app import get_app

        return get_app()
    raise AttributeError(name)
