"""Paged and filtered image lists over HTTP, in both modes (embedded: SQLite; distributed:
PostgreSQL behind two gateways).

A few hundred images are written straight into the read model (as the projector writes them:
the lists read nothing else), many sharing a creation time so that the name tie-breaker decides.
Every sort order, ascending and descending, is walked page by page through the ``Link`` headers
and must give the unpaged list exactly; every filter and some combinations must give the unpaged
list filtered in Python; bad values are 400s with their field; a marker the caller cannot see is
refused like an unknown one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import create_engine

from tests.e2e.conftest import database_url
from tests.support.catalogue_rows import matches, seed

pytestmark = pytest.mark.e2e

COUNT = 240
ORDERS = ["name", "-name", "created", "-created", "+created", "created,name", "created,-name", "-created,name",
          "-created,-name", "name,created", "-name,-created", "created,created"]


@dataclass
class World:
    system: object
    viewer_key: str
    dcs: tuple[str, str]
    owners: tuple[str, str]
    states: list[dict]

    def root(self) -> httpx.Client:
        return self.system.client()

    def viewer(self) -> httpx.Client:
        return httpx.Client(base_url=self.system.url, headers={"ES-API-KEY": self.viewer_key}, timeout=30)


@pytest.fixture(scope="module")
def world(system) -> World:
    tag = uuid.uuid4().hex[:6]
    dcs = (f"pa{tag}", f"pb{tag}")
    for dc in dcs:
        system.admin("dc", "create", dc)
    viewer = f"viewer{tag}"
    key = system.new_user(viewer)
    system.admin("role", "create", f"img{tag}", "--permission=admin", "--permission=image_admin")
    system.admin("role", "add-user", f"img{tag}", viewer)
    system.admin("role", "attach", f"img{tag}", dcs[0])
    engine = create_engine(database_url(system))
    try:
        with engine.begin() as conn:
            states = seed(conn, COUNT, prefix="pg", owners=("admin", viewer), dcs=dcs)
    finally:
        engine.dispose()
    return World(system, key, dcs, ("admin", viewer), states)


def whole(client: httpx.Client, path: str = "/image/", **params) -> list:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert "link" not in response.headers
    return response.json()["result"]


def walk(client: httpx.Client, limit: int, path: str = "/image/", **params) -> list:
    """Every page from the first, following ``Link: rel="next"`` until it is absent."""
    response = client.get(path, params={"limit": limit, **params})
    items: list = []
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        page = response.json()["result"]
        items.extend(page)
        pages += 1
        assert len(page) <= limit
        link = response.headers.get("link")
        if link is None:
            return items
        assert len(page) == limit, "a short page is the last one"
        assert pages <= 2 + COUNT // limit, "the pages never end"
        url, rel = link.split(">; ")
        # Path-absolute: resolved against the request's URL (the client's scheme and host).
        assert rel == 'rel="next"' and (url.startswith("</api/image/") or url.startswith("</api/dc/")), url
        response = client.get(client.base_url.join(url[1:]))


@pytest.mark.parametrize("order", ORDERS)
def test_the_pages_of_every_order_are_the_whole_list(world, order):
    with world.root() as client:
        expected = whole(client, order_by=order)
        assert len(expected) == COUNT and len(set(expected)) == COUNT
        assert walk(client, 7, order_by=order) == expected
        # A page boundary inside a run of equal creation times (7 share each): the tie-breaker decides.
        assert walk(client, 3, order_by=order) == expected


def test_pages_of_objects_and_extended_objects_are_the_whole_list(world):
    with world.root() as client:
        for view in ("full", "extended"):
            expected = whole(client, order_by="-created", **{view: "true"})
            assert walk(client, 50, order_by="-created", **{view: "true"}) == expected
            assert [item["name"] for item in expected] == whole(client, order_by="-created")


def test_a_page_of_the_whole_size_or_larger_has_no_link(world):
    with world.root() as client:
        assert walk(client, COUNT) == whole(client)
        assert walk(client, 1000) == whole(client)
        last = whole(client)[-1]
        response = client.get("/image/", params={"limit": 5, "marker": last})
        assert (response.status_code, response.json()["result"], response.headers.get("link")) == (200, [], None)


#: Each filter set, and whether the seeds give it any image (the empty ones check that LIKE's
#: wildcards in a value are taken literally: unescaped, "pg_" and "d_x" would match).
FILTERS = [
    ({"status": "pending"}, True), ({"status": "1"}, True), ({"status": "OK"}, True),
    ({"name": "pga"}, True), ({"name": "PGB1"}, True), ({"name": "pgA2_"}, True), ({"name": "pg_"}, False),
    ({"name": "pga%"}, False),
    ({"ostype": "3"}, True), ({"ostype": 6}, True),
    ({"owner": "admin"}, True), ({"owner": "nobody-at-all"}, False),
    ({"tag": "web"}, True), ({"tag": "db_x"}, True), ({"tag": ["web", "linux"]}, True), ({"tag": "dbxx"}, False),
    ({"tag": "d_x"}, False),
    ({"access": "deleted"}, True), ({"access": "1"}, True), ({"access": "private"}, True),
    ({"status": "ok", "tag": "web", "owner": "admin"}, True),
    ({"name": "pgb", "ostype": "2", "access": "3"}, True),
    ({"status": "pending", "tag": ["db_x"], "access": "public"}, True),
]


def _with_dcs(world: World, filters: dict) -> list[dict]:
    return [dict(filters, attached_to=dc) for dc in world.dcs]


@pytest.mark.parametrize("index", range(len(FILTERS)))
def test_each_filter_and_combination_is_the_unpaged_list_filtered(world, index):
    filters, some = FILTERS[index]
    with world.root() as client:
        everything = whole(client, extended="true", order_by="-created")
        expected = [item["name"] for item in everything if matches(item, filters)]
        assert bool(expected) == some and len(expected) < COUNT
        assert whole(client, order_by="-created", **filters) == expected
        assert walk(client, 9, order_by="-created", **filters) == expected


def test_the_attached_to_filter_alone_and_with_others(world):
    with world.root() as client:
        everything = whole(client, extended="true")
        for filters in [{"attached_to": world.dcs[0]}, {"attached_to": world.dcs[1]}, {"attached_to": "main"},
                        *_with_dcs(world, {"tag": "web", "status": "ok"})]:
            expected = [item["name"] for item in everything if matches(item, filters)]
            assert expected or filters["attached_to"] == "main"
            assert whole(client, **filters) == expected
            assert walk(client, 11, **filters) == expected


def test_dc_is_ignored_unpaged_as_by_the_original_and_filters_a_paged_request(world):
    """``es get /image -dc X`` sends Danube Cloud's general ``dc`` parameter: the whole list,
    byte for byte; a paged request (new in imagesvc) reads it as ``attached_to``."""
    with world.root() as client:
        for params in ({}, {"full": "true"}):
            plain = client.get("/image/", params=params)
            for dc in (world.dcs[1], "no-such-dc", "d" * 40):
                with_dc = client.get("/image/", params={**params, "dc": dc})
                assert with_dc.status_code == 200
                assert with_dc.content.partition(b'","status"')[2] == plain.content.partition(b'","status"')[2]
        attached = whole(client, attached_to=world.dcs[1])
        assert len(attached) < COUNT
        assert walk(client, 7, dc=world.dcs[1]) == attached
        assert client.get("/image/", params={"limit": 5, "dc": "d" * 17}).json()["result"] == {
            "dc": ["Ensure this value has at most 16 characters (it has 17)."]}


def test_filters_stay_within_what_the_caller_sees(world):
    """The viewer is an ImageAdmin of the first datacenter: it sees the images bound there."""
    bound_here = {s["name"] for s in world.states if s["dc_bound"] == world.dcs[0]}
    with world.viewer() as client:
        visible = whole(client, extended="true")
        assert {item["name"] for item in visible} == bound_here
        for filters in [{"owner": "admin"}, {"attached_to": world.dcs[1]}, {"status": "pending", "tag": "web"}, {}]:
            expected = [item["name"] for item in visible if matches(item, filters)]
            assert whole(client, **filters) == expected
            assert walk(client, 4, order_by="-created", **filters) == whole(client, order_by="-created", **filters)


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "abc"}, "limit"), ({"limit": ""}, "limit"),
    ({"marker": "no-such-image", "limit": "5", "order_by": "-created"}, "marker"), ({"status": "bogus"}, "status"),
    ({"access": "bogus"}, "access"), ({"ostype": "linux"}, "ostype"), ({"ostype": "9"}, "ostype"),
    ({"tag": "a,b"}, "tag"), ({"name": "x" * 65}, "name"), ({"attached_to": "d" * 17}, "attached_to"),
    ({"limit": "5", "dc": "d" * 17}, "dc"), ({"marker": "x", "marker_created": "soon", "order_by": "created"},
                                            "marker_created"),
])
def test_a_bad_value_is_400_with_its_field(world, params, field):
    with world.root() as client:
        response = client.get("/image/", params=params)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["status"] == "FAILURE" and list(body["result"]) == [field]


def test_a_bad_order_by_is_still_412_before_the_paging_checks(world):
    with world.root() as client:
        response = client.get("/image/", params={"order_by": "size", "limit": "0"})
        assert response.status_code == 412


def test_a_marker_the_caller_cannot_see_is_refused_like_an_unknown_one(world):
    invisible = next(s["name"] for s in world.states if s["dc_bound"] != world.dcs[0])
    with world.viewer() as client:
        # Looked up: an order by created, without the marker's marker_created.
        seen = client.get("/image/", params={"limit": 5, "marker": invisible, "order_by": "-created"})
        unknown = client.get("/image/", params={"limit": 5, "marker": "pg-never-was", "order_by": "-created"})
    assert seen.status_code == unknown.status_code == 400
    assert seen.json()["result"] == unknown.json()["result"] == {"marker": ["Unknown marker: it names nothing in this list."]}
    with world.root() as client:
        assert client.get("/image/", params={"limit": 5, "marker": invisible, "order_by": "-created"}
                          ).status_code == 200


def test_the_unpaged_list_is_streamed_and_a_page_is_not(world):
    with world.root() as client:
        unpaged = client.get("/image/", params={"full": "true"})
        paged = client.get("/image/", params={"full": "true", "limit": 10})
    assert unpaged.headers.get("transfer-encoding") == "chunked" and "content-length" not in unpaged.headers
    assert paged.headers["content-length"] == str(len(paged.content))
    assert unpaged.json()["result"][:10] == paged.json()["result"]


def test_a_datacenters_image_list_pages_and_filters_too(world):
    """``GET /api/dc/<dc>/image/``: attached images but deleted ones, by name only."""
    dc = world.dcs[1]
    with world.root() as client:
        expected = whole(client, f"/dc/{dc}/image/")
        assert walk(client, 6, f"/dc/{dc}/image/") == expected
        assert walk(client, 6, f"/dc/{dc}/image/", order_by="-name") == whole(client, f"/dc/{dc}/image/",
                                                                               order_by="-name")
        everything = whole(client, f"/dc/{dc}/image/", extended="true")
        assert whole(client, f"/dc/{dc}/image/", tag="web") == [i["name"] for i in everything if "web" in i["tags"]]
        assert client.get(f"/dc/{dc}/image/", params={"order_by": "created", "limit": 0}).status_code == 412


# --- the SDK and the command line ----------------------------------------------------------------


def test_the_sdk_reads_pages_and_iterates_over_all_of_them(world):
    from imagesvc.client import Client, Page

    with world.root() as client:
        names = whole(client, order_by="-created")
        webs = whole(client, tag="web", status="ok")
        attached = whole(client, attached_to=world.dcs[1])
    with Client(world.system.url, api_key=world.system.api_key) as sdk:
        first = sdk.images(limit=25, full=False, order_by="-created")
        assert isinstance(first, Page) and first.items == names[:25] and first.next_marker == names[24]
        assert first.next.startswith(world.system.url) and not first.last and first.next_marker_created
        second = sdk.images(limit=25, marker=first.next_marker, full=False, order_by="-created")
        assert second.items == names[25:50]
        assert [image.name for image in sdk.iter_images(page_size=37, order_by="-created")] == names
        assert list(sdk.iter_images(page_size=7, full=False, tag=["web"], status="ok")) == webs
        assert sdk.list_images(full=False, tag="web", status="ok") == webs
        tail = sdk.images(limit=1000, marker=names[-3], full=False, order_by="-created")
        assert (tail.items, tail.next, tail.next_marker, tail.last) == (names[-2:], None, None, True)
        with pytest.raises(TypeError):
            sdk.images(colour="blue")
        assert list(sdk.iter_images(page_size=9, full=False, attached_to=world.dcs[1])) == attached


def test_the_async_sdk_iterates_over_all_pages(world):
    import asyncio

    from imagesvc.client import AsyncClient

    with world.root() as client:
        names = whole(client, name="PGB")

    async def read() -> list[str]:
        async with AsyncClient(world.system.url, api_key=world.system.api_key) as sdk:
            page = await sdk.images(limit=5, full=False, name="PGB")
            assert page.items == names[:5]
            return [item async for item in sdk.iter_images(page_size=11, full=False, name="PGB")]

    assert asyncio.run(read()) == names


def test_the_command_line_lists_a_page_or_every_page(world, tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, IMAGESVC_CLIENT_URL=world.system.url, IMAGESVC_CLIENT_API_KEY=world.system.api_key,
               IMAGESVC_CLIENT_CONFIG=str(tmp_path / "profiles.json"), COLUMNS="200")

    def imagesvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imagesvc", "image", "list", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    with world.root() as client:
        expected = whole(client, full="true", tag="linux", access="private")
    every = imagesvc("--all", "--limit", "4", "--tag", "linux", "--access", "private", "--json")
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == expected
    page = imagesvc("--limit", "3", "--tag", "linux", "--access", "private", "--json")
    assert json.loads(page.stdout) == {"images": expected[:3], "next_marker": expected[2]["name"],
                                       "next_marker_created": None}
    with world.root() as client:
        by_created = whole(client, full="true", tag="linux", access="private", order_by="-created")
    listed = imagesvc("--limit", "3", "--order-by=-created", "--tag", "linux", "--access", "private", "--json")
    assert listed.returncode == 0, listed.stderr
    first = json.loads(listed.stdout)
    assert first["images"] == by_created[:3] and first["next_marker"] == by_created[2]["name"]
    assert first["next_marker_created"]  # an order by created: the marker's key goes with it
    second = imagesvc("--limit", "3", "--order-by=-created", "--marker", first["next_marker"], "--marker-created",
                      first["next_marker_created"], "--tag", "linux", "--access", "private")
    assert second.returncode == 0, second.stderr
    assert by_created[3]["name"] in second.stdout and by_created[2]["name"] not in second.stdout
    assert "--marker-created " in second.stderr
    table = imagesvc("--limit", "3", "--marker", expected[2]["name"], "--tag", "linux", "--access", "private")
    assert table.returncode == 0 and expected[3]["name"] in table.stdout and expected[2]["name"] not in table.stdout
    assert f"--marker {expected[5]['name']}" in table.stderr
    with world.root() as client:
        attached = whole(client, full="true", attached_to=world.dcs[1])
    for args in ([], ["--all", "--limit", "7"]):  # the whole list in one answer, and page by page
        listed = imagesvc("--attached-to", world.dcs[1], "--json", *args)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == attached
    refused = imagesvc("--status", "bogus")
    assert refused.returncode != 0 and "status" in refused.stderr
    assert imagesvc("--limit", "0").returncode == 2
