"""One log pipeline: library records (uvicorn's) come out in the same shape as ours, without the
ANSI-coloured copy of the message uvicorn attaches for its own formatter."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from imagesvc.shared.logging import configure_logging


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


def test_a_stderr_replaced_and_closed_after_set_up_does_not_break_later_lines(monkeypatch):
    """A command run in-process under a captured stderr configures logging; once that capture is
    closed, later lines (other threads, other tests) go to the stderr of the moment instead of
    raising ``I/O operation on closed file``."""
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)
    configure_logging("migrate", fmt="json")
    captured.close()
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)
    from imagesvc.shared.logging import get_logger

    get_logger("t").warning("after.close", n=1)
    logging.getLogger("kombu").warning("library after close")
    lines = [orjson.loads(line) for line in later.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["after.close", "library after close"]
