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
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{k}={record.__dict__[k]}"
            for k in TASK_FIELDS
            if record.__dict__.get(k) is not None and k not in ("event",)
        ]
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(extra)}]{sep}{tail}"


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
