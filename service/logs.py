"""The console's logging: one line per event, and never a signed URL.

Signed URLs are bearer credentials (anyone holding one may upload or download until it
expires), and RQ, httpx, uvicorn and tracebacks would print them whole. Every log record,
exception text included, has the query string of any URL or request path in it replaced
before any handler sees it: a record factory, so it holds whichever handlers Litestar, RQ or
uvicorn install later. httpx's per-request INFO lines are silenced outright.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
REDACTED = "?<redacted>"
# A query string with at least one `name=value`: the part after `?` up to a space or quote.
_QUERY = re.compile(r"\?[^\s\"'<>?]*=[^\s\"'<>]*")
_QUIET = ("httpx", "httpcore", "alembic")  # per request, per migration step
# An API key's secret (`tg_<key id>_<random>`): the key id stays, the random part goes.
_KEY_SECRET = re.compile(r"(tg_[0-9a-z]{26}_)[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """Drops every query string (where signatures, credentials and expiries travel) and the
    secret part of any API key."""
    if "?" in text:
        text = _QUERY.sub(REDACTED, text)
    return _KEY_SECRET.sub(r"\1<redacted>", text) if "tg_" in text else text


def _redacted(arg: object) -> object:
    if isinstance(arg, str):
        return redact(arg)
    if arg is None or isinstance(arg, (int, float)):
        return arg
    text = str(arg)  # e.g. an httpx.URL
    return redact(text) if _QUERY.search(text) or _KEY_SECRET.search(text) else arg


def install_redaction() -> None:
    """Makes every later log record carry a redacted message; safe to call twice."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "tollgate_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # The arguments are redacted one by one, not the formatted message: some formatters
        # (uvicorn's access log) read them.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.tollgate_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_console_logging(level: int = logging.INFO) -> None:
    """One stderr handler on the root logger, unless one is there (a test's, or an app's);
    RQ then adds none of its own, so its lines are not printed twice."""
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr)
    install_redaction()
