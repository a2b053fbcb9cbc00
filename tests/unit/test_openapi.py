"""The published OpenAPI description names every route the gateway serves, with its methods."""

from __future__ import annotations

import re

from kombu import Connection
from starlette.routing import Route

from imagesvc.services.gateway import openapi
from imagesvc.services.gateway.app import create_app
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.db.engine import make_engine


def test_every_route_is_described():
    app = create_app(Settings(broker_url="memory://"), engine=make_engine("sqlite://"), publisher=None,
                     topology=build_topology("doc.", quorum=False), connect=lambda: Connection("memory://"))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path == "/api/openapi.json" or not route.path.endswith("/"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        served.setdefault(path, set()).update(m.lower() for m in route.methods - {"HEAD"})
    documented = {path: {m for m in item if m != "parameters"} for path, item in openapi.document()["paths"].items()}
    # /state/ is the original's alias of /status/ and is documented under it.
    served.pop("/api/task/{task_id}/state/")
    assert served == documented


def test_document_is_valid_json_with_the_security_scheme():
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header",
                                                                   "name": "ES-API-KEY"}
    for item in document["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                assert operation["operationId"] and operation["responses"]
