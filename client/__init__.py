"""The imagesvc Python SDK.

``Client`` / ``AsyncClient`` speak the HTTP API (httpx only: importing this package loads nothing
of the server). They and ``Broker``, the message-level half, are imported on first use: the
``imagesvc`` command builds its parser from ``imagesvc.client.cli`` in every process it starts
(workers, gateways), which must not load httpx or AMQP for it. docs/sdk.md is the user's guide.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imagesvc.client.errors import (
    ApiError,
    BadRequest,
    ExpectationFailed,
    Forbidden,
    ImagesvcError,
    Locked,
    NotAcceptable,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ServerError,
    TaskFailed,
    TooManyRequests,
    TransportError,
    Unavailable,
)
from imagesvc.client.models import Image, Page, Progress, Repository, Task

if TYPE_CHECKING:
    from imagesvc.client.broker import Broker
    from imagesvc.client.http import USER_AGENT, AsyncClient, Client

__all__ = [
    "Client", "AsyncClient", "Broker", "Image", "Page", "Task", "Progress", "Repository", "USER_AGENT",
    "ImagesvcError", "TransportError", "ApiError", "BadRequest", "Forbidden", "NotFound", "NotAcceptable",
    "PreconditionFailed", "ExpectationFailed", "Locked", "PreconditionRequired", "TooManyRequests", "Unavailable",
    "ServerError", "TaskFailed",
]

#: Names served by a submodule imported on first use (module ``__getattr__``, PEP 562).
_LAZY = {"Broker": "imagesvc.client.broker", "Client": "imagesvc.client.http",
         "AsyncClient": "imagesvc.client.http", "USER_AGENT": "imagesvc.client.http"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
