"""One log pipeline: library records (uvicorn's) come out in the same shape as ours, without the
ANSI-coloured copy of the message uvicorn attaches for its own formatter."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from shared.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    configure_logging("tests", fmt="console")


def test_uvicorn_records_lose_their_coloured_copy_in_json_and_on_a_console():
    for fmt in ("json", "console"):
        stream = io.StringIO()
        configure_logging("gateway", fmt=fmt, stream=stream)
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 4242, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
        out = stream.getvalue()
        assert "Started server process [4242]" in out, out
        assert "\x1b" not in out and "color_message" not in out, out
        if fmt == "json":
            line = orjson.loads(out.splitlines()[-1])
            assert (line["event"], line["service"], line["level"]) == ("Started server process [4242]", "gateway",
                                                                      "info")
