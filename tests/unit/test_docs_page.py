"""The interactive API docs at ``/api/docs/``: a page of ours that loads only same-origin assets
(the vendored Swagger UI and our initializer) under a strict Content-Security-Policy, needs no
credentials, points Swagger UI at ``/api/openapi.json``, and lets browsers cache the assets for good
under URLs that change with their content."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kombu import Connection
from starlette.testclient import TestClient

from imagesvc.services.gateway import docs_page
from imagesvc.services.gateway.app import create_app
from imagesvc.shared.broker.topology import build_topology
from imagesvc.shared.config import Settings
from imagesvc.shared.db.engine import make_engine

CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
VENDORED = docs_page.STATIC / "swagger-ui"


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(broker_url="memory://"), engine=make_engine("sqlite://"), publisher=None,
                     topology=build_topology("docs.", quorum=False), connect=lambda: Connection("memory://"))
    return TestClient(app)  # no lifespan: the docs need neither the broker nor the database


class _Page(HTMLParser):
    """The URLs a page loads or links, its scripts' inline text, and any event-handler attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[tuple[str | None, str]] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value]
        self.handlers += [name for name, _value in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append((values.get("src"), ""))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script:
            src, text = self.scripts[-1]
            self.scripts[-1] = (src, text + data)


def parsed(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.mark.parametrize("path", ["/api/docs/", "/api/docs"])
def test_the_page_is_html_under_a_strict_content_security_policy_without_credentials(client, path):
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    policy = answer.headers["content-security-policy"]
    assert policy.startswith(CSP)
    assert "'unsafe-eval'" not in policy and "script-src 'self';" in policy  # no inline script, no eval
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache"  # new asset digests are seen at once


def test_the_page_loads_only_same_origin_assets_and_runs_no_inline_script(client):
    page = parsed(client.get("/api/docs/").text)
    assert page.urls
    for url in page.urls:
        parts = urlsplit(url)
        # A data: URL (the empty favicon) is allowed by img-src; anything else is a path of ours.
        assert parts.scheme == "data" or (not parts.scheme and not parts.netloc and url.startswith("/api/")), url
        assert not re.search(r"https?://", url), url
    assert [src for src, _text in page.scripts] == [
        f"/api/docs/swagger-ui-bundle.js?v={digest('swagger-ui-bundle.js')}",
        f"/api/docs/docs.js?v={digest('docs.js')}"]
    assert all(not text.strip() for _src, text in page.scripts)
    assert not page.handlers


def digest(name: str) -> str:
    path, _media_type = docs_page.ASSETS[name]
    return hashlib.sha256((docs_page.STATIC / path).read_bytes()).hexdigest()[:16]


def test_the_assets_answer_with_their_types_and_are_cached_for_good_under_their_digest(client):
    page = parsed(client.get("/api/docs/").text)
    expected = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "docs.js": "text/javascript; charset=utf-8",
                "swagger-ui.css": "text/css; charset=utf-8"}
    loaded = {urlsplit(url).path.removeprefix("/api/docs/"): url for url in page.urls if url.startswith("/api/docs/")}
    assert loaded.keys() == expected.keys()
    for name, url in loaded.items():
        answer = client.get(url)
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == expected[name]
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.headers["content-security-policy"].startswith(CSP)
        assert answer.content == (docs_page.STATIC / docs_page.ASSETS[name][0]).read_bytes()
        # Asked for without the digest (or with an old one), it must be revalidated.
        for stale in (f"/api/docs/{name}", f"/api/docs/{name}?v=0123456789abcdef"):
            assert client.get(stale).headers["cache-control"] == "no-cache", stale


def test_the_licenses_are_served_beside_the_bundle(client):
    bundle = client.get("/api/docs/swagger-ui-bundle.js").text
    assert bundle.startswith("/*! For license information please see swagger-ui-bundle.js.LICENSE.txt */")
    for name in ("swagger-ui-bundle.js.LICENSE.txt", "LICENSE", "NOTICE"):
        answer = client.get(f"/api/docs/{name}")
        assert (answer.status_code, answer.headers["content-type"]) == (200, "text/plain; charset=utf-8"), name


def test_the_initializer_renders_the_gateway_s_description(client):
    script = client.get("/api/docs/docs.js").text
    assert re.search(r'\burl: "/api/openapi\.json"', script)
    assert 'dom_id: "#swagger-ui"' in script and 'id="swagger-ui"' in client.get("/api/docs/").text
    assert "validatorUrl: null" in script  # nothing is sent to another origin
    assert not re.search(r"https?://", script)
    described = client.get("/api/openapi.json")
    assert described.status_code == 200 and described.json()["openapi"] == "3.1.0"


def test_text_is_sent_compressed_to_a_client_that_accepts_it(client):
    compressed = client.get("/api/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["content-encoding"] == "gzip" and compressed.headers["vary"] == "Accept-Encoding"
    assert int(compressed.headers["content-length"]) < len(compressed.content) // 2  # decoded by the client
    plain = client.get("/api/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == compressed.content


@pytest.mark.parametrize("header, accepted", [
    (None, False), ("", False), ("gzip", True), ("GZIP", True), ("x-gzip", True), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*", True), ("*;q=0", False), ("gzip;q=0, *", False),
    ("identity", False), ("br, *;q=0.1", True), ("gzip;q=nonsense", False),
])
def test_accept_encoding_is_read_as_rfc_9110_says(header, accepted):
    assert docs_page.accepts_gzip(header) is accepted


def test_a_method_the_docs_do_not_take_is_405_for_anybody(client):
    """The docs are among the paths anybody may call: no credentials are asked for first."""
    for path in ("/api/docs/", "/api/docs/docs.js"):
        answer = client.post(path)
        assert (answer.status_code, answer.json()) == (405, {"detail": 'Method "POST" not allowed.'}), path
    assert client.get("/api/docs/swagger-ui.css.map").status_code == 404  # no source maps are shipped


def test_the_vendored_files_are_the_ones_the_readme_names():
    readme = (VENDORED / "README.md").read_text()
    version = re.search(r"`swagger-ui-dist` \*\*(5\.\d+\.\d+)\*\*", readme).group(1)
    assert f'"{version}"' in (VENDORED / "swagger-ui-bundle.js").read_text()
    listed = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", readme))
    shipped = {path.name for path in VENDORED.iterdir()} - {"README.md"}
    assert listed.keys() == shipped == {"swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-bundle.js.LICENSE.txt",
                                        "LICENSE", "NOTICE"}
    for name, sha256 in listed.items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == sha256, name
    assert "Apache License" in (VENDORED / "LICENSE").read_text()


def test_the_package_ships_what_the_page_needs():
    """pyproject.toml's package data for the gateway covers every file the docs serve."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "imagesvc.services.gateway"]
    needed = [docs_page.PAGE, *(path for path, _media_type in docs_page.ASSETS.values())]
    for path in needed:
        assert any(Path("static", path).match(pattern) for pattern in patterns), path
        assert (docs_page.STATIC / path).is_file(), path
    assert not list(docs_page.STATIC.rglob("*.map"))
