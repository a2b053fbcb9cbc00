"""A client that speaks Danube Cloud's ``es`` wire protocol (reference-behaviour §11).

Headers as ``es`` 1.3.3 sends them, parameters sent as strings (``-access 1`` is ``"1"``), GET
parameters in the query string with ``True``/``False`` as Python's requests renders them, and the
``ES-STREAM`` synchronous mode: while the server writes whitespace the client waits (``es`` prints
a dot per byte); then the first line is the final status code and the rest the JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class EsResult:
    status: int
    body: Any
    streamed: bool
    dots: int
    task_id: str | None


def es(base_url: str, api_key: str | None, action: str, resource: str, *, token: str | None = None,
       **params: Any) -> EsResult:
    """One ``es`` call. ``login`` POSTs to ``/accounts/login/``, ``logout`` GETs
    ``/accounts/logout/``; with ``token`` (what ``es login`` keeps in its session file) the client
    sends ``Authorization: Token`` and, like ``es``, no API key unless one is given."""
    if action in ("login", "logout"):
        method, resource = ("POST", "/accounts/login") if action == "login" else ("GET", "/accounts/logout")
    else:
        method = {"get": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}[action]
    headers = {
        "User-Agent": "es/1.3.3",
        "Accept": "application/json; indent=4",
        "Content-Type": "application/json; indent=4",
        "ES-STREAM": "es",
    }
    if api_key:
        headers["ES-API-KEY"] = api_key
    if token:
        headers["Authorization"] = f"Token {token}"
    url = base_url + resource.rstrip("/") + "/"
    values = {k: v if isinstance(v, (bool, type(None))) else str(v) for k, v in params.items()}
    with httpx.Client(timeout=120, follow_redirects=False) as client:
        if method == "GET":
            query = {k: str(v) for k, v in values.items() if v is not None}
            request = client.build_request(method, url, params=query, headers=headers)
        else:
            request = client.build_request(method, url, content=orjson.dumps(values), headers=headers)
        response = client.send(request, stream=True)
        try:
            raw = b"".join(response.iter_bytes())
        finally:
            response.close()
    if "es_stream" not in response.headers:
        return EsResult(response.status_code, orjson.loads(raw), False, 0, response.headers.get("es_task_id"))
    stripped = raw.lstrip()
    dots = len(raw) - len(stripped)
    code, _, body = stripped.partition(b"\n")
    return EsResult(int(code), orjson.loads(body), True, dots, response.headers.get("es_task_id"))
