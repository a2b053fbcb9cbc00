"""Paged and filtered lists: the query parameters' checks, the ``Link`` header, the precedence of
the new 400s, and the unpaged list streamed in exactly the bytes the one-read rendering gives
(the gateway in process on SQLite; tests/e2e/test_list_paging.py walks the pages in both modes,
tests/integration/test_list_paging_postgres.py checks the cursor and the plans on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

import httpx
import orjson
import pytest
from starlette.datastructures import QueryParams
from starlette.requests import Request

from imagesvc.services.gateway import listing
from imagesvc.services.gateway.queries import ImageListing, Queries, UnknownMarker
from imagesvc.services.gateway.routes import HIDDEN_FROM_LISTS
from imagesvc.shared.db import accounts
from imagesvc.shared.db.engine import write_transaction
from tests.support.catalogue_rows import seed
from tests.unit.test_gateway import KEY, client_for

ORDERS = ["name", "-name", "created", "-created", "created,-name", "-created,-name", "name,-created"]


def parsed(query: str) -> tuple[listing.Paging, listing.ImageFilters, dict[str, list[str]]]:
    errors: dict[str, list[str]] = {}
    params = QueryParams(query)
    return listing.parse_paging(params, errors, keyed=True), listing.parse_image_filters(params, errors), errors


# --- the parameters ------------------------------------------------------------------------------


def test_no_parameter_is_the_whole_unfiltered_list():
    paging, filters, errors = parsed("full=true&order_by=-created")
    assert (paging, filters, errors) == (listing.Paging(), listing.ImageFilters(), {})
    assert not paging.paged and not filters.any


def test_every_parameter_is_read_and_normalised():
    paging, filters, errors = parsed("limit=10&marker=web-1&status=Pending&name=Cent&ostype=%2B5&owner=alice"
                                     "&tag=web&tag=db&tag=web&dc=main&access=private")
    assert errors == {}
    assert paging == listing.Paging(10, "web-1")
    assert filters == listing.ImageFilters(status=2, name="Cent", ostype=5, owner="alice", tags=("web", "db"),
                                           attached_to="main", access=3)


def test_dc_is_the_attachment_filter_only_in_a_paged_request():
    # Danube Cloud's es sends its general ``dc`` parameter; the original's image list ignores it.
    assert parsed("dc=main&full=true")[1:] == (listing.ImageFilters(), {})
    assert parsed("dc=" + "d" * 40)[1:] == (listing.ImageFilters(), {})  # not even checked
    assert parsed("attached_to=main")[1] == listing.ImageFilters(attached_to="main")
    assert parsed("limit=5&dc=main")[1] == listing.ImageFilters(attached_to="main")
    assert parsed("marker=x&dc=main")[1] == listing.ImageFilters(attached_to="main")
    assert parsed("limit=5&dc=main&attached_to=main")[2] == {"dc": [listing.TWO_NAMES]}


def test_marker_created_is_a_timestamp_read_in_utc():
    from datetime import datetime, timezone

    paging = parsed("marker=x&marker_created=2026-01-02T03:04:05.123456%2B01:00")[0]
    assert paging.marker_created == datetime(2026, 1, 2, 2, 4, 5, 123456, tzinfo=timezone.utc)
    assert parsed("marker=x&marker_created=2026-01-02T03:04:05")[0].marker_created == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_a_marker_without_a_limit_is_a_page_of_the_largest_size():
    assert parsed("marker=x")[0] == listing.Paging(listing.MAX_LIMIT, "x")


@pytest.mark.parametrize("query, field, message", [
    ("limit=0", "limit", listing.TOO_SMALL),
    ("limit=-3", "limit", listing.TOO_SMALL),
    ("limit=1001", "limit", listing.TOO_LARGE),
    ("limit=abc", "limit", "Enter a whole number."),
    ("limit=1.5", "limit", "Enter a whole number."),
    ("limit=" + "9" * 5000, "limit", "Enter a whole number."),
    ("limit=", "limit", listing.BLANK),
    ("limit=1&limit=2", "limit", listing.ONCE),
    ("marker=", "marker", listing.BLANK),
    ("marker=" + "x" * 65, "marker", listing.UNKNOWN_MARKER),
    ("marker=a%00b", "marker", listing.UNKNOWN_MARKER),
    ("status=bogus", "status", "Select a valid choice. bogus is not one of the available choices."),
    ("status=3", "status", "Select a valid choice. 3 is not one of the available choices."),
    ("access=bogus", "access", "Select a valid choice. bogus is not one of the available choices."),
    ("access=9", "access", "Select a valid choice. 9 is not one of the available choices."),
    ("access=2", "access", "Select a valid choice. 2 is not one of the available choices."),
    ("ostype=linux", "ostype", "Enter a whole number."),
    ("ostype=7", "ostype", "Select a valid choice. 7 is not one of the available choices."),
    ("ostype=0", "ostype", "Select a valid choice. 0 is not one of the available choices."),
    ("name=" + "n" * 65, "name", "Ensure this value has at most 64 characters (it has 65)."),
    ("name=a%01", "name", "Invalid value."),
    ("owner=" + "o" * 151, "owner", "Ensure this value has at most 150 characters (it has 151)."),
    ("tag=a,b", "tag", "Invalid value."),
    ("tag=x%22y", "tag", "Invalid value."),
    ("tag=", "tag", listing.BLANK),
    ("tag=" + "t" * 65, "tag", "Ensure this value has at most 64 characters (it has 65)."),
    ("attached_to=" + "d" * 17, "attached_to", "Ensure this value has at most 16 characters (it has 17)."),
    ("limit=1&dc=" + "d" * 17, "dc", "Ensure this value has at most 16 characters (it has 17)."),
    ("marker=x&marker_created=yesterday", "marker_created", listing.BAD_TIMESTAMP),
    ("marker=x&marker_created=2026-13-01T00:00:00", "marker_created", listing.BAD_TIMESTAMP),
    ("marker=x&marker_created=" + "2" * 100, "marker_created", listing.BAD_TIMESTAMP),
    ("marker=x&marker_created=", "marker_created", listing.BLANK),
    ("limit=1&marker_created=2026-01-01T00:00:00", "marker_created", listing.WITHOUT_MARKER),
    ("status=ok&status=pending", "status", listing.ONCE),
])
def test_a_bad_value_is_a_field_error(query, field, message):
    _, _, errors = parsed(query)
    assert errors == {field: [message]}


def test_all_the_bad_values_are_reported_at_once_paging_first():
    _, _, errors = parsed("access=x&status=x&limit=0&marker=")
    assert list(listing.ordered_errors(errors, listing.IMAGE_FILTERS)) == ["limit", "marker", "status", "access"]


def _request(url: str) -> Request:
    path, _, query = url.partition("?")
    return Request({"type": "http", "method": "GET", "scheme": "https", "server": ("api.example.com", 443),
                    "path": path, "root_path": "", "query_string": query.encode(), "headers": [
                        (b"host", b"api.example.com")]})


def test_the_next_link_is_path_absolute_and_carries_everything_but_the_old_marker():
    from datetime import datetime, timezone

    request = _request("/api/image/?limit=2&order_by=-created&tag=a&tag=b&marker=old&full=true&name=x%20y"
                       "&marker_created=old")
    link = listing.next_link(request, "new_1", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    # No scheme or host: those the gateway sees are not the client's behind a TLS proxy.
    assert link == ('</api/image/?limit=2&order_by=-created&tag=a&tag=b&full=true&name=x+y&marker=new_1'
                    '&marker_created=2026-01-02T03%3A04%3A05.000006%2B00%3A00>; rel="next"')
    assert listing.next_link(_request("/api/image/?limit=2"), "n") == '</api/image/?limit=2&marker=n>; rel="next"'


def test_a_page_of_a_list_in_memory():
    items = ["a", "b", "c", "d", "e"]
    assert listing.page_after(items, str, listing.Paging(2)) == (["a", "b"], True)
    assert listing.page_after(items, str, listing.Paging(2, "b")) == (["c", "d"], True)
    assert listing.page_after(items, str, listing.Paging(2, "c")) == (["d", "e"], False)
    assert listing.page_after(items, str, listing.Paging(2, "e")) == ([], False)
    assert listing.page_after(items, str, listing.Paging(2, "z")) is None


# --- the gateway -------------------------------------------------------------------------------


@pytest.fixture
def catalogue(engine):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=KEY, is_superadmin=True)
        accounts.create_user(conn, "viewer", api_key="viewer-key", is_superadmin=False)
        accounts.create_user(conn, "nobody", api_key="nobody-key", is_superadmin=False)
        accounts.create_datacenter(conn, "dc1")
        accounts.create_role(conn, "images-dc1", ["admin", "image_admin"])
        accounts.add_member(conn, "images-dc1", "viewer")
        accounts.attach_role(conn, "images-dc1", "dc1")
        return seed(conn, 300, prefix="u", owners=("root", "viewer"), dcs=("dc1", "main"))


@pytest.fixture
def api(engine, catalogue):
    publisher = _Publisher()
    with client_for(engine, publisher) as client:
        client.publisher = publisher
        yield client


class _Publisher:
    def __init__(self):
        self.published = []

    def publish(self, **message):
        self.published.append(message)


def _without_task_id(body: bytes) -> bytes:
    head, _, rest = body.partition(b'","status":')
    assert head.startswith(b'{"task_id":"')
    return rest


def old_rendering(engine, order: str, *, full: bool, extended: bool) -> bytes:
    """What ``GET /api/image/`` answered before paging (its code, kept as ``image_names`` and
    ``image_docs``), without its task id."""
    from imagesvc.services.gateway.routes import parse_order_by

    queries = Queries(engine)
    parsed_order = parse_order_by(order)
    if full or extended:
        docs = queries.image_docs(parsed_order, exclude_access=HIDDEN_FROM_LISTS, extended=extended)
        return _without_task_id(b'{"task_id":"x","status":"SUCCESS","result":' + b"[" + b",".join(docs) + b"]}")
    names = queries.image_names(parsed_order, exclude_access=HIDDEN_FROM_LISTS)
    return _without_task_id(orjson.dumps({"task_id": "x", "status": "SUCCESS", "result": names}))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("view", ["names", "full", "extended"])
def test_the_unpaged_list_is_streamed_in_the_bytes_of_the_old_rendering(api, engine, order, view):
    params = {"order_by": order, **({view: "true"} if view != "names" else {})}
    response = api.get("/image/", params=params)
    assert response.status_code == 200
    # Streamed: sent in chunks, so no length is known before the end.
    assert "content-length" not in response.headers and "link" not in response.headers
    assert response.headers["content-type"] == "application/json"
    assert _without_task_id(response.content) == old_rendering(engine, order, full=view != "names",
                                                                extended=view == "extended")
    assert len(response.json()["result"]) == 300  # deleted images are listed too (none is internal)


def test_the_stream_comes_in_chunks_of_rows(engine, catalogue):
    queries = Queries(engine)
    chunks = list(queries.image_stream(ImageListing([("name", False)], HIDDEN_FROM_LISTS), full=True,
                                       extended=False, batch=64))
    assert len(chunks) == 300 // 64 + 2  # five chunks of rows and the closing bracket
    assert chunks[-1] == b"]" and chunks[0].startswith(b"[{")
    assert len(orjson.loads(b"".join(chunks))) == 300


def test_a_stream_whose_rows_fill_its_last_batch_exactly_ends_the_same(engine, catalogue):
    queries = Queries(engine)
    listing_ = ImageListing([("created", True)], HIDDEN_FROM_LISTS)
    exact = list(queries.image_stream(listing_, full=False, extended=False, batch=100))
    assert len(exact) == 4 and exact[-1] == b"]"
    assert b"".join(exact) == b"".join(queries.image_stream(listing_, full=False, extended=False, batch=7))


def test_an_empty_stream_is_an_empty_list(engine):
    assert b"".join(Queries(engine).image_stream(ImageListing([("name", False)], HIDDEN_FROM_LISTS), full=False,
                                                 extended=False)) == b"[]"


def test_an_indented_answer_is_whole_and_the_same_json(api):
    indented = api.get("/image/", headers={"Accept": "application/json; indent=2"}, params={"status": "pending"})
    plain = api.get("/image/", params={"status": "pending"})
    assert indented.headers["content-length"] == str(len(indented.content))
    assert indented.text.startswith('{\n  "task_id"')
    assert json.loads(indented.text)["result"] == plain.json()["result"]


def test_a_page_has_a_length_and_a_next_link_until_the_last(api):
    first = api.get("/image/", params={"limit": 100, "order_by": "-created"})
    assert first.headers["content-length"] == str(len(first.content))
    names = first.json()["result"]
    assert len(names) == 100
    assert first.headers["link"].startswith(f'</api/image/?limit=100&order_by=-created&marker={names[-1]}'
                                            '&marker_created=')
    second = api.get(_next(first))
    third = api.get(_next(second))
    assert "link" not in third.headers and len(third.json()["result"]) == 100
    whole = api.get("/image/", params={"order_by": "-created"}).json()["result"]
    assert names + second.json()["result"] + third.json()["result"] == whole


@pytest.mark.parametrize("params, status, field", [
    ({"order_by": "size", "limit": "0", "status": "bogus"}, 412, None),  # order_by stays first
    ({"extended": "perhaps", "limit": "0"}, 400, "extended"),  # then the flags, one at a time
    ({"limit": "0", "marker": "nothing"}, 400, "limit"),  # a bad limit: the marker is not looked up
])
def test_the_new_checks_come_after_the_old_ones(api, params, status, field):
    response = api.get("/image/", params=params)
    assert response.status_code == status, response.text
    if field is not None:
        assert list(response.json()["result"]) == [field]
    assert api.publisher.published == []


def test_no_permission_is_still_403_before_any_paging_check(api):
    response = api.get("/image/", params={"limit": "0", "status": "bogus"}, headers={"ES-API-KEY": "nobody-key"})
    assert (response.status_code, response.json()) == (403, {"detail": "Permission denied"})


def test_a_marker_the_caller_cannot_see_is_refused_as_an_unknown_one(api, catalogue):
    """A marker that must be looked up (an order by ``created``, no ``marker_created``)."""
    hidden = next(s["name"] for s in catalogue if s["dc_bound"] is None)  # global: SuperAdmins only
    as_viewer = {"ES-API-KEY": "viewer-key"}
    for marker in (hidden, "no-such-image"):
        response = api.get("/image/", params={"limit": 5, "marker": marker, "order_by": "-created"},
                           headers=as_viewer)
        assert response.status_code == 400
        assert response.json()["result"] == {"marker": [listing.UNKNOWN_MARKER]}
    assert api.get("/image/", params={"limit": 5, "marker": hidden, "order_by": "-created"}).status_code == 200


def test_a_name_marker_is_its_own_key_and_never_looked_up(api, catalogue):
    names = sorted(s["name"] for s in catalogue)
    response = api.get("/image/", params={"limit": 3, "marker": names[10] + "!"})  # names no image
    assert response.json()["result"] == names[11:14]
    assert api.get("/image/", params={"limit": 3, "marker": names[10], "order_by": "-name"}).json()[
        "result"] == names[9:6:-1]


def _delete(engine, name: str) -> None:
    from sqlalchemy import delete

    from imagesvc.shared.db.models import ReadImage

    with write_transaction(engine) as conn:
        conn.execute(delete(ReadImage.__table__).where(ReadImage.__table__.c.name == name))


@pytest.mark.parametrize("order", ORDERS)
def test_removing_the_image_a_page_ended_with_does_not_break_the_walk(api, engine, order):
    whole = api.get("/image/", params={"order_by": order}).json()["result"]
    first = api.get("/image/", params={"limit": 10, "order_by": order})
    assert first.json()["result"] == whole[:10]
    _delete(engine, whole[9])  # the marker
    _delete(engine, whole[12])  # and one further on
    walked = first.json()["result"]
    response = api.get(_next(first))
    while True:
        assert response.status_code == 200, response.text
        walked += response.json()["result"]
        if "link" not in response.headers:
            break
        response = api.get(_next(response))
    assert walked == [name for name in whole if name != whole[12]]


def test_an_image_hidden_after_a_page_does_not_break_the_walk_either(api, engine, catalogue):
    from sqlalchemy import update

    from imagesvc.domain import fields
    from imagesvc.shared.db.models import ReadImage

    as_viewer = {"ES-API-KEY": "viewer-key"}
    first = api.get("/image/", params={"limit": 5, "order_by": "-created"}, headers=as_viewer)
    names = first.json()["result"]
    table = ReadImage.__table__
    with write_transaction(engine) as conn:
        conn.execute(update(table).where(table.c.name == names[-1]).values(access=fields.ACCESS_INTERNAL))
    second = api.get(_next(first), headers=as_viewer)
    assert second.status_code == 200 and len(second.json()["result"]) == 5
    assert not set(second.json()["result"]) & set(names)


def test_an_unknown_marker_is_unknownmarker_in_the_queries(engine, catalogue):
    """Only when it must be looked up: an order by ``created`` without ``marker_created``."""
    from datetime import datetime, timezone

    queries = Queries(engine)
    by_created = ImageListing([("created", False)], HIDDEN_FROM_LISTS)
    with pytest.raises(UnknownMarker):
        queries.image_page(by_created, limit=5, marker="zzz", full=False, extended=False)
    items, last, _ = queries.image_page(by_created, limit=5, marker="zzz", full=False, extended=False,
                                        marker_created=datetime(1970, 1, 1, tzinfo=timezone.utc))
    assert len(items) == 5 and last.name == orjson.loads(items[-1])
    assert queries.image_page(ImageListing([("name", False)], HIDDEN_FROM_LISTS), limit=5, marker="zzz",
                              full=False, extended=False)[0] == []


# --- the other lists: in memory, paged after their identifying field ----------------------------


def _next(response) -> str:
    """The ``Link`` of ``response``, relative to the test client's base URL (which ends in /api)."""
    link = response.headers["link"]
    assert link.startswith("</api/") and link.endswith('>; rel="next"'), link
    return link[len("</api"):].split(">")[0]


def _walk(client, path: str, limit: int, **params) -> list:
    response = client.get(path, params={"limit": limit, **params})
    items: list = []
    while True:
        assert response.status_code == 200, response.text
        items += response.json()["result"]
        if "link" not in response.headers:
            return items
        response = client.get(_next(response))


def test_the_vms_of_an_image_page_after_a_hostname(api, engine, catalogue):
    from datetime import datetime, timezone

    from imagesvc.shared.db import vms

    image = next(s for s in catalogue if "main" in s["dcs"])
    with write_transaction(engine) as conn:
        for n in range(11):
            vms.put_vm(conn, vms.VmRecord(
                uuid=f"00000000-0000-4000-8000-{n:012d}", hostname=f"vm{n:02d}.example.com", dc="main",
                node="cn1", status="running", ostype=1, disks=(vms.Disk(1, 1024, image["uuid"]),),
                changed_at=datetime.now(timezone.utc)))
    path = f"/image/{image['name']}/vm/"
    for order in ("hostname", "-hostname"):
        whole = api.get(path, params={"order_by": order})
        assert "link" not in whole.headers and len(whole.json()["result"]) == 11
        assert _walk(api, path, 4, order_by=order) == whole.json()["result"]
        assert _walk(api, path, 3, order_by=order, full="true") == api.get(
            path, params={"order_by": order, "full": "true"}).json()["result"]
    long_name = "vm05" + "x" * 239 + ".example.com"  # hostnames go up to 255 characters
    with write_transaction(engine) as conn:
        vms.put_vm(conn, vms.VmRecord(
            uuid="00000000-0000-4000-8000-999999999999", hostname=long_name, dc="main", node="cn1",
            status="running", ostype=1, disks=(vms.Disk(1, 1024, image["uuid"]),),
            changed_at=datetime.now(timezone.utc)))
    assert len(long_name) == 255
    after_long = api.get(path, params={"limit": 2, "marker": long_name})
    assert after_long.status_code == 200, after_long.text
    assert after_long.json()["result"] == ["vm06.example.com", "vm07.example.com"]
    assert api.get(path, params={"limit": 1, "marker": "v" * 256}).json()["result"] == {
        "marker": [listing.UNKNOWN_MARKER]}
    page = api.get(path, params={"limit": 2, "marker": "vm03.example.com"})
    assert page.json()["result"] == ["vm04.example.com", "vm05.example.com"]
    assert page.headers["link"].endswith('marker=vm05.example.com>; rel="next"')
    assert api.get(path, params={"limit": 2, "marker": "vm99"}).json()["result"] == {
        "marker": [listing.UNKNOWN_MARKER]}
    assert api.get(path, params={"limit": "x", "order_by": "name"}).status_code == 412
    assert api.get("/image/nothing-here/vm/", params={"limit": "0"}).status_code == 404  # 404 before the 400


@pytest.fixture
def store_api(engine, catalogue):
    from datetime import datetime, timezone

    from imagesvc.domain import repositories
    from imagesvc.shared.db import repositories as stored

    urls = {f"repo{n}": f"https://images{n}.example.com/" for n in range(5)}
    manifests = [{"uuid": f"00000000-0000-4000-8000-{n:012d}", "name": f"img{n}", "version": "1.0", "type": "zvol",
                  "os": "linux", "published_at": f"2026-01-{1 + n:02d}T00:00:00Z"} for n in range(13)]
    with write_transaction(engine) as conn:
        stored.save_refreshed(conn, repositories.refreshed("repo1", urls["repo1"], images=manifests,
                                                           now=datetime.now(timezone.utc)))
    with client_for(engine, _Publisher(),
                    image_repositories=tuple(f"{name}={url}" for name, url in urls.items())) as client:
        yield client


def test_the_repositories_page_after_a_name(store_api):
    whole = store_api.get("/imagestore/").json()["result"]
    assert len(whole) >= 5
    assert _walk(store_api, "/imagestore/", 2) == whole
    assert _walk(store_api, "/imagestore/", 2, full="true") == store_api.get(
        "/imagestore/", params={"full": "true"}).json()["result"]
    assert store_api.get("/imagestore/", params={"limit": 1001}).json()["result"] == {"limit": [listing.TOO_LARGE]}


def test_a_repositorys_images_page_after_a_uuid(store_api):
    whole = store_api.get("/imagestore/repo1/image/").json()["result"]
    assert len(whole) == 13
    assert _walk(store_api, "/imagestore/repo1/image/", 5) == whole
    assert _walk(store_api, "/imagestore/repo1/image/", 5, full="true") == store_api.get(
        "/imagestore/repo1/image/", params={"full": "true"}).json()["result"]
    after = store_api.get("/imagestore/repo1/image/", params={"limit": 1, "marker": whole[3]})
    assert after.json()["result"] == [whole[4]]
    assert store_api.get("/imagestore/repo1/image/", params={"marker": "nope"}).json()["result"] == {
        "marker": [listing.UNKNOWN_MARKER]}
    assert store_api.get("/imagestore/nope/image/", params={"limit": 0}).status_code == 404


# --- the SDK's side: requests it sends, pages it reads ----------------------------------------------


def _scripted(pages: dict[str | None, tuple[list, str | None]], seen: list[httpx.URL]):
    """A transport answering ``GET /api/image/`` from ``pages`` (marker -> items, next marker)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        items, following = pages[request.url.params.get("marker")]
        headers = {}
        if following is not None:
            headers["Link"] = f'<{request.url.copy_set_param("marker", following)}>; rel="next"'
        return httpx.Response(200, json={"task_id": "t", "status": "SUCCESS", "result": items}, headers=headers)

    return answer


PAGES = {None: (["a", "b"], "b"), "b": (["c", "d"], "d"), "d": (["e"], None)}


def test_a_page_carries_the_next_marker_from_the_link_header():
    from imagesvc.client import Client, Page

    seen: list[httpx.URL] = []
    with Client("http://api.test", api_key="k", transport=httpx.MockTransport(_scripted(PAGES, seen))) as client:
        page = client.images(limit=2, full=False, order_by="-created", tag=["web", "db"], status="ok", ostype=3)
        assert page == Page(["a", "b"], next=str(seen[0].copy_set_param("marker", "b")), next_marker="b")
        assert list(page) == ["a", "b"] and len(page) == 2 and not page.last
        assert seen[0].params.get_list("tag") == ["web", "db"]
        assert dict(seen[0].params.multi_items()) == {"limit": "2", "order_by": "-created", "tag": "db",
                                                     "status": "ok", "ostype": "3"}
        assert seen[0].path == "/api/image/"
        assert list(client.iter_images(page_size=2, full=False)) == ["a", "b", "c", "d", "e"]
        assert [url.params.get("marker") for url in seen[1:]] == [None, "b", "d"]
        client.images(limit=2, full=False, datacenter="dc1", attached_to="dc2")
        assert seen[-1].path == "/api/dc/dc1/image/" and seen[-1].params["attached_to"] == "dc2"


def test_a_relative_link_is_resolved_against_the_request_and_its_created_key_followed():
    from imagesvc.client import Client

    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        marker = request.url.params.get("marker")
        if marker is None:
            link = '</api/image/?limit=2&order_by=-created&marker=b&marker_created=2026-01-01T00%3A00%3A00%2B00%3A00>'
            return httpx.Response(200, json={"task_id": "t", "status": "SUCCESS", "result": ["a", "b"]},
                                  headers={"Link": link + '; rel="next"'})
        return httpx.Response(200, json={"task_id": "t", "status": "SUCCESS", "result": ["c"]})

    with Client("https://api.test:8443", api_key="k", transport=httpx.MockTransport(answer)) as client:
        page = client.images(limit=2, full=False, order_by="-created")
        assert page.next == ("https://api.test:8443/api/image/?limit=2&order_by=-created&marker=b"
                             "&marker_created=2026-01-01T00%3A00%3A00%2B00%3A00")
        assert (page.next_marker, page.next_marker_created) == ("b", "2026-01-01T00:00:00+00:00")
        assert list(client.iter_images(page_size=2, full=False, order_by="-created")) == ["a", "b", "c"]
        assert seen[-1].params["marker"] == "b" and seen[-1].params["marker_created"] == "2026-01-01T00:00:00+00:00"


def test_the_async_client_iterates_the_pages_too():
    from imagesvc.client import AsyncClient

    seen: list[httpx.URL] = []

    async def read() -> list[str]:
        transport = httpx.MockTransport(_scripted(PAGES, seen))
        async with AsyncClient("http://api.test", api_key="k", transport=transport) as client:
            return [name async for name in client.iter_images(page_size=2, full=False)]

    assert asyncio.run(read()) == ["a", "b", "c", "d", "e"]
    assert len(seen) == 3


@pytest.mark.parametrize("call, error", [
    (lambda c: c.images(limit=0), ValueError), (lambda c: c.images(limit=1001), ValueError),
    (lambda c: c.images(limit=True), ValueError), (lambda c: c.images(colour="red"), TypeError),
    (lambda c: c.list_images(tags="x"), TypeError), (lambda c: c.image_vms_page("x", limit=0), ValueError),
])
def test_the_sdk_refuses_what_cannot_be_sent(call, error):
    from imagesvc.client import Client

    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing is sent")

    with Client("http://api.test", api_key="k", transport=httpx.MockTransport(never)) as client:
        with pytest.raises(error):
            call(client)


def test_a_stream_holds_no_connection_between_its_batches(engine, catalogue):
    from imagesvc.services.gateway.routes import _Chunks

    chunks = _Chunks(Queries(engine).image_stream(ImageListing([("name", False)], HIDDEN_FROM_LISTS), full=True,
                                                  extended=False, batch=10))
    assert chunks.next().startswith(b"[{")
    assert engine.pool.checkedout() == 0  # while the client reads slowly, nothing is held
    assert chunks.step().startswith(b",{")
    assert engine.pool.checkedout() == 0
    chunks.close()
    assert engine.pool.checkedout() == 0


@pytest.fixture
def small_engine(migrated_url, catalogue):
    """The gateway's engine with a pool of 2 connections (and 2 more in overflow), waiting at
    most 0.1 s for one (the gateway's waits 30 s)."""
    from sqlalchemy import create_engine

    engine = create_engine(migrated_url, pool_size=2, max_overflow=2, pool_timeout=0.1,
                           connect_args={"check_same_thread": False})
    yield engine
    engine.dispose()


def test_slow_readers_of_whole_lists_do_not_exhaust_the_pool(small_engine):
    from imagesvc.services.gateway.routes import _Chunks

    queries = Queries(small_engine)
    readers = [_Chunks(queries.image_stream(ImageListing([("created", True)], HIDDEN_FROM_LISTS), full=True,
                                            extended=False, batch=20)) for _ in range(10)]
    try:
        # Ten answers begun, none read further: more than the pool holds.
        firsts = [reader.next() for reader in readers]
        assert small_engine.pool.checkedout() == 0
        with client_for(small_engine, _Publisher()) as client:
            assert client.get("/image/", params={"limit": 3}).status_code == 200
        answers = {first + reader.drain() for first, reader in zip(firsts, readers)}
        assert len(answers) == 1 and len(orjson.loads(answers.pop())) == 300
    finally:
        for reader in readers:
            reader.close()


def test_an_exhausted_pool_is_a_503_to_retry_not_a_500(small_engine):
    with client_for(small_engine, _Publisher()) as client:
        assert client.get("/image/", params={"limit": 1}).status_code == 200
        held = [small_engine.connect() for _ in range(4)]  # every connection the pool may open
        try:
            for params in ({}, {"limit": 1}):
                response = client.get("/image/", params=params)
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "5"
        finally:
            for conn in held:
                conn.close()
        assert client.get("/image/", params={"limit": 1}).status_code == 200
