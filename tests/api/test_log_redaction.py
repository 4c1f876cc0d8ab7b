"""Signed URLs never reach a log line (service/logs.py): messages, arguments (uvicorn's access
log reads them), URL objects and tracebacks all lose their query strings."""

from __future__ import annotations

import logging

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from service.logs import install_redaction, redact

SIGNED = "http://api/files/jobs/j/out/0?m=GET&exp=1&sig=SECRET"


def test_redact_drops_query_strings_only() -> None:
    assert redact(SIGNED) == "http://api/files/jobs/j/out/0?<redacted>"
    assert redact('"PUT /files/k?m=PUT&X-Amz-Signature=SECRET HTTP/1.1"') == (
        '"PUT /files/k?<redacted> HTTP/1.1"')
    assert redact("is it done? yes") == "is it done? yes"


def test_every_part_of_a_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction()
    log = logging.getLogger("tollgate.test")
    with caplog.at_level(logging.INFO):
        log.info("fetched %s", httpx.URL(SIGNED))
        log.info("fetched " + SIGNED)
        log.info("kw %(url)s", {"url": SIGNED})
        try:
            raise RuntimeError(f"upload to {SIGNED} failed")
        except RuntimeError:
            log.exception("upload failed")
    text = caplog.text
    assert "SECRET" not in text and text.count("?<redacted>") == 4, text


def test_uvicorn_access_lines_keep_their_shape() -> None:
    install_redaction()
    access = logging.getLogger("uvicorn.access")  # uvicorn's config stops its propagation
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                    "/files/k?m=GET&exp=1&sig=SECRET", "1.1", 200)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    line = AccessFormatter(fmt="%(message)s", use_colors=False).format(records[-1])
    assert line == '127.0.0.1:5 - "GET /files/k?<redacted> HTTP/1.1" 200'


def test_httpx_request_lines_are_silenced() -> None:
    install_redaction()
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
