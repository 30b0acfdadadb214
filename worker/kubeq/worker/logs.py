"""Logging for the worker process: text or JSON, one line per record. Nothing on import.

Task state changes carry `queue`, `task_id`, `type`, `attempt` (and `event`) as extra
fields; the JSON formatter emits them as keys, the text formatter appends them.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

from kubeq.text import printable

TASK_FIELDS = ("event", "queue", "task_id", "type", "attempt", "reason", "worker")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in TASK_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line per record: task types, ids and messages carry data from Redis, so their
    control characters are escaped (a newline in a task type cannot forge a line); only a
    traceback keeps its own line breaks, below the line."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = printable(record.getMessage()), None
        safe.exc_text = None  # a cache filled by another formatter would skip escaping
        line = super().format(safe)
        extra = [
            f"{k}={printable(record.__dict__[k])}"
            for k in TASK_FIELDS
            if record.__dict__.get(k) is not None and k not in ("event",)
        ]
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(extra)}]{sep}{tail}"

    def formatException(self, ei: Any) -> str:
        return printable(super().formatException(ei), newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), newlines=True)


def logging_config(fmt: str = "text", level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for the worker: one handler on stderr, the chosen format."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JSONFormatter"}
        if fmt == "json"
        else {
            "()": f"{__name__}.TextFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kubeq": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "kubeq",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "kubeq": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
