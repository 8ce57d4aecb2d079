"""Log lines: each carries the id of the request that wrote it; ``LOG_FORMAT=json`` makes each
one JSON object on one line (the gunicorn logs too, see gunicorn.conf.py)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from taskapp import request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record: the id of the request being served, else "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.CURRENT.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, request id, and the
    traceback of an exception. An access line of gunicorn's also gets its request id from the
    response's ``X-Request-ID`` (its ``{x-request-id}o`` atom)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.CURRENT.get()
        if isinstance(record.args, dict):
            rid = record.args.get("{x-request-id}o") or rid
        if rid and rid != "-":
            line["request_id"] = rid
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a LOG_FORMAT value (``text`` or ``json``)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str) -> None:
    """Send the app's log lines (INFO and up) to stderr in ``log_format``, each with its request
    id; once per process (a second app changes only the format)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_taskapp", False)), None)
    if handler is None:
        if root.handlers:
            # Someone configured logging already (a test runner, an embedding app): give its
            # handlers the request id, and leave their format alone.
            for existing in root.handlers:
                if not any(isinstance(f, RequestIdFilter) for f in existing.filters):
                    existing.addFilter(RequestIdFilter())
            return
        handler = logging.StreamHandler(sys.stderr)
        handler._taskapp = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    handler.setFormatter(formatter(log_format))
