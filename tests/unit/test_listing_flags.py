"""Both list flags are checked even when one of them already asks for objects (found by F1's
fuzzing: ``?full=1&extended=1638`` was answered 200)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from imagesvc.services.gateway.http import ValidationFailed
from imagesvc.services.gateway.routes import wants_objects


def request_with(query: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": []})


@pytest.mark.parametrize("query, expected", [("", False), ("full=true", True), ("extended=1", True),
                                             ("full=false&extended=false", False)])
def test_either_flag_asks_for_objects(query, expected):
    assert wants_objects(request_with(query)) is expected


@pytest.mark.parametrize("query, field", [("full=1&extended=1638", "extended"), ("extended=true&full=yes", "full"),
                                          ("full=true&extended=", "extended")])
def test_a_malformed_flag_is_refused_whatever_the_other_says(query, field):
    with pytest.raises(ValidationFailed) as refused:
        wants_objects(request_with(query))
    assert list(refused.value.errors) == [field]
