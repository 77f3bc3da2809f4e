"""agentd's own logs: text for people or one JSON object per line for collectors, on stderr."""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

LOG_FILE_MAX_BYTES = 50 * 1024 * 1024
LOG_FILE_KEEP = 5


class TextFormatter(logging.Formatter):
    """Lines for people: local time with its UTC offset, the convention agentctl shows too."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(sep=" ", timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", process_name: str = "agentd", log_file: Path | None = None) -> None:
    """Configure the root logger once for this process: stderr, plus `log_file` rotated by size (daemon.log_file)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_KEEP, encoding="utf-8"))
    for handler in handlers:
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(TextFormatter(f"%(asctime)s {process_name}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
