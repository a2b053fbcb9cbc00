"""The gateway's interactive API docs: ``GET /api/docs/`` renders ``/api/openapi.json`` with Swagger
UI, vendored in the package (``static/swagger-ui/``; its README names the version).

What the page promises:

- Everything it loads comes from this origin: our page and initializer (``static/docs.html``,
  ``static/docs.js``) and Swagger UI's bundle and stylesheet. It runs under
  ``CONTENT_SECURITY_POLICY``, which is sent with the docs' responses only (the API itself answers
  JSON, which no browser renders as a page).
- The page names each asset with ``?v=<digest of the file>``. An asset asked for with its current
  digest may be cached for a year (``immutable``); asked for without it, or with an older one, it
  must be revalidated. The page itself is always revalidated, so a new file is seen at once.
- The page and its assets need no credentials (``OPEN_PATHS``). "Try it out" sends the API key or
  token typed into Swagger UI's Authorize dialog to this origin's API, and the page keeps it in
  memory only.
- Text is sent gzip-compressed to a client that accepts it (the bundle: 1.8 MB, 0.5 MB so).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagesvc.services.gateway.blocking import in_thread

STATIC = Path(__file__).with_name("static")
PREFIX = "/api/docs"

#: Swagger UI sets inline styles, so styles may be inline; scripts may not. ``connect-src`` (the
#: description, "Try it out") falls back to ``default-src``: this origin only. No other site may
#: frame the page (a framed "Try it out" could be clicked by a visitor who did not mean to).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'")
#: How long a browser may keep an asset asked for under its current digest.
CACHE_ASSET = "public, max-age=31536000, immutable"
CACHE_REVALIDATE = "no-cache"

_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"

#: The assets, by their name under ``PREFIX``: (file under ``static/``, media type). The license
#: files are served too: the bundle's first line points at its licenses file by that name.
ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", _JS),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", _CSS),
    "docs.js": ("docs.js", _JS),
    "swagger-ui-bundle.js.LICENSE.txt": ("swagger-ui/swagger-ui-bundle.js.LICENSE.txt", _TEXT),
    "LICENSE": ("swagger-ui/LICENSE", _TEXT),
    "NOTICE": ("swagger-ui/NOTICE", _TEXT),
}
PAGE = "docs.html"
#: The paths of the docs (without a trailing slash), for the gateway's list of paths anybody may call.
OPEN_PATHS = (PREFIX, *(f"{PREFIX}/{name}" for name in ASSETS))
#: Headers of every response of the docs.
_SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                     "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class _File:
    body: bytes
    gzipped: bytes
    media_type: str
    #: A digest of ``body``: the ``v`` under which it may be cached for good.
    version: str


def _file(body: bytes, media_type: str) -> _File:
    # mtime=0: the same bytes in every process, so that any gateway of a deployment can answer.
    return _File(body, gzip.compress(body, compresslevel=9, mtime=0), media_type,
                 hashlib.sha256(body).hexdigest()[:16])


@dataclass(frozen=True)
class _Files:
    page: _File
    assets: dict[str, _File]


@functools.cache
def _load(static: Path) -> _Files:
    """(Thread pool; once per process and directory.) The assets, and the page naming each of
    them under its digest."""
    assets = {name: _file((static / path).read_bytes(), media_type) for name, (path, media_type) in ASSETS.items()}
    page = (static / PAGE).read_text("utf-8")
    for name, asset in assets.items():
        page = page.replace(f'"{PREFIX}/{name}"', f'"{PREFIX}/{name}?v={asset.version}"')
    return _Files(_file(page.encode(), _HTML), assets)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (RFC 9110 §12.5.3): named (``gzip`` or
    ``x-gzip``) with a weight above 0, or not named and ``*`` has one. No header: identity."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # a weight we cannot read admits nothing
        weights[coding.lower()] = weight
    named = [weights[c] for c in ("gzip", "x-gzip") if c in weights]
    return max(named) > 0 if named else weights.get("*", 0.0) > 0


def _answer(request: Request, file: _File, cache_control: str) -> Response:
    headers = {**_SECURITY_HEADERS, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    body = file.body
    if accepts_gzip(request.headers.get("accept-encoding")):
        body = file.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, headers=headers, media_type=file.media_type)


class DocsPage:
    """The route handlers of the docs over the files in ``static`` (read on first use)."""

    def __init__(self, static: Path = STATIC):
        self._static = static
        self._loaded: _Files | None = None

    def routes(self) -> list[Route]:
        """``PREFIX`` (both forms, as every gateway path) and each asset (GET, and so HEAD)."""
        return [Route(PREFIX, self.page, methods=["GET"]), Route(PREFIX + "/", self.page, methods=["GET"]),
                *(Route(f"{PREFIX}/{name}", self.asset, methods=["GET"]) for name in ASSETS)]

    async def _files(self) -> _Files:
        if self._loaded is None:  # reading and compressing 2 MB: not on the event loop
            self._loaded = await in_thread(_load, self._static)
        return self._loaded

    async def page(self, request: Request) -> Response:
        return _answer(request, (await self._files()).page, CACHE_REVALIDATE)

    async def asset(self, request: Request) -> Response:
        # Only the asset routes lead here, so the path is PREFIX/<a name of ASSETS>.
        asset = (await self._files()).assets[request.url.path.removeprefix(PREFIX + "/")]
        current = request.query_params.get("v") == asset.version
        return _answer(request, asset, CACHE_ASSET if current else CACHE_REVALIDATE)
