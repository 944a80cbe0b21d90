"""Logging setup: readable text, or one JSON object per line for ELK/Loki."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from driftline.streams.settings import Settings

_FIELDS = ("model", "partition", "alert_id", "topic", "offset")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` per record; never secrets."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in _FIELDS:
            if hasattr(record, f):
                doc[f] = getattr(record, f)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(settings: Settings, *, quiet: bool = False) -> None:
    """Configure the ``driftline`` loggers once, from the settings."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("driftline")
    root.handlers[:] = [handler]
    root.setLevel("ERROR" if quiet else settings.log_level.upper())
    root.propagate = False
