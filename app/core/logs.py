"""Logging: one line per event; JSON (one object per line) with ``IMGSTREAM_LOG_JSON=1``.
Lines about an image carry ``image_id`` (pass ``extra={"image_id": ...}``)."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(out).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        image_id = getattr(record, "image_id", None)
        return f"{line} image_id={image_id}" if image_id else line


def configure_logging(settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else
                         TextFormatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("imgstream")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    root.propagate = False


def json_logging_config(settings) -> dict:
    """A dictConfig for Faust's worker: every logger, Faust's own included, writes JSON lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.core.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {"imgstream": {"handlers": ["stderr"], "level": settings.log_level.upper(), "propagate": False}},
    }
