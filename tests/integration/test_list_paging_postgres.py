"""The list queries on a real PostgreSQL: migration 0013 both ways (Alembic sees no drift), the
plans of keyset pages (an index scan from the marker, never a sort of the whole table), the
unpaged list read in batches that hold no connection (nor transaction) between them, and its
bytes equal to the one-read rendering.

The plans are read on a few thousand rows; the 1,000,000-image figures are bench/catalogue.py's.
"""

from __future__ import annotations

import re

import pytest
from alembic import command
from sqlalchemy import create_engine, event, text

from imagesvc.services.gateway.listing import ImageFilters
from imagesvc.services.gateway.queries import ImageListing, Queries
from imagesvc.services.gateway.routes import HIDDEN_FROM_LISTS, parse_order_by
from imagesvc.shared.db import migrate
from imagesvc.shared.db.engine import write_transaction
from tests.support.catalogue_rows import seed
from tests.support.services import create_database, drop_database, migrated_engine

pytestmark = pytest.mark.postgres

COUNT = 5000
ORDERS = ["name", "-name", "created", "-created", "created,-name", "-created,-name"]


@pytest.fixture(scope="module")
def engine(postgres_admin_url: str):
    """An engine made as the gateway makes its own: autocommit, one statement at a time."""
    with migrated_engine(postgres_admin_url, pool_size=4, relaxed_durability=True, single_statements=True) as engine:
        with write_transaction(engine) as conn:
            seed(conn, COUNT, prefix="pp", owners=("admin", "alice", "bob"), dcs=("main", "dc2"))
            conn.execute(text("ANALYZE rm_images"))
        yield engine


def test_the_migration_matches_the_models_and_goes_down_and_up(postgres_admin_url):
    url = create_database(postgres_admin_url)
    try:
        migrate.upgrade(url)
        command.check(migrate.alembic_config(url))
        command.downgrade(migrate.alembic_config(url), "0012")
        probe = create_engine(url)
        with probe.connect() as conn:
            names = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'rm_images'")).scalars())
        probe.dispose()
        assert "ix_rm_images_created" in names and not any(n.endswith("_name") for n in names if n.startswith("ix_"))
        migrate.upgrade(url)
        command.check(migrate.alembic_config(url))
    finally:
        drop_database(postgres_admin_url, url)


def _captured(engine, run) -> list[tuple[str, dict]]:
    """The SELECTs on rm_images ``run()`` sends, with their parameters."""
    seen: list[tuple[str, dict]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM rm_images" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def _plan(engine, statement: str, parameters: dict) -> str:
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cursor:
            cursor.execute("EXPLAIN " + statement, parameters)
            return "\n".join(row[0] for row in cursor.fetchall())


def _page_plan(engine, order: str, marker: str | None, filters: ImageFilters = ImageFilters()) -> str:
    queries = Queries(engine)
    listing = ImageListing(parse_order_by(order), HIDDEN_FROM_LISTS, filters=filters)
    sent = _captured(engine, lambda: queries.image_page(listing, limit=100, marker=marker, full=True,
                                                        extended=False))
    return "\n".join("== " + _plan(engine, statement, parameters) for statement, parameters in sent)


def _names(engine, order: str) -> list[str]:
    return Queries(engine).image_names(parse_order_by(order), exclude_access=HIDDEN_FROM_LISTS)


@pytest.mark.parametrize("order", ORDERS)
def test_first_and_deep_pages_scan_an_index_from_the_marker(engine, order, capsys):
    deep = _names(engine, order)[int(COUNT * 0.9)]
    for marker in (None, deep):
        plan = _page_plan(engine, order, marker)
        with capsys.disabled():
            print(f"\n--- order_by={order} marker={'(first page)' if marker is None else deep}\n{plan}")
        # Each statement (the marker's look-up, then the page's one or two reads) scans an index.
        statements = plan.split("== ")[1:]
        # With a marker: by name, one read (the marker is its own key); by created, the marker's
        # look-up (no marker_created given here), then one read (or two for mixed directions: see
        # queries._after).
        expected = (1,) if marker is None or "created" not in order else (2, 3)
        assert len(statements) in expected, plan
        for one in statements:
            assert re.search(r"Index Scan( Backward)? using (uq_rm_images_name|ix_rm_images_created_name\w*)",
                             one), plan
        # An Incremental Sort of a run of equal keys is fine; a Sort of everything is not.
        assert not re.search(r"^\s*(->\s*)?Sort\b", plan, re.MULTILINE), plan


def test_a_filtered_page_uses_the_filters_index(engine, capsys):
    plan = _page_plan(engine, "name", None, ImageFilters(owner="alice"))
    with capsys.disabled():
        print(f"\n--- owner=alice\n{plan}")
    assert "ix_rm_images_owner_name" in plan or "uq_rm_images_name" in plan, plan
    assert not re.search(r"^\s*(->\s*)?Sort\b", plan, re.MULTILINE), plan


@pytest.mark.parametrize("order", ["name", "-created"])
def test_a_paused_stream_holds_no_connection_nor_transaction(engine, order):
    """After a chunk, while its reader pauses, the stream has given its connection back to the
    pool, and no session of the database sits in a transaction; each batch was a LIMITed keyset
    query (the rows are never all in the gateway)."""
    stream = Queries(engine).image_stream(ImageListing(parse_order_by(order), HIDDEN_FROM_LISTS), full=True,
                                          extended=False, batch=100)
    observer = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        sent = _captured(engine, lambda: [next(stream), next(stream)])
        # One query per batch (the second of -created may be two: see queries._after).
        assert len(sent) in ((2,) if order == "name" else (2, 3)) and all("LIMIT" in st for st, _ in sent), sent
        assert engine.pool.checkedout() == 0
        with observer.connect() as conn:
            states = conn.execute(text(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")).scalars().all()
        assert states and "idle in transaction" not in states, states
        rest = b"".join(stream)
        assert rest.endswith(b"]")
    finally:
        stream.close()
        observer.dispose()


@pytest.mark.parametrize("order", ["name", "-created"])
@pytest.mark.parametrize("view", ["names", "full", "extended"])
def test_the_stream_is_the_one_read_rendering_byte_for_byte(engine, order, view):
    import orjson

    queries = Queries(engine)
    parsed = parse_order_by(order)
    full, extended = view != "names", view == "extended"
    streamed = b"".join(queries.image_stream(ImageListing(parsed, HIDDEN_FROM_LISTS), full=full, extended=extended))
    if full:
        old = b"[" + b",".join(queries.image_docs(parsed, exclude_access=HIDDEN_FROM_LISTS, extended=extended)) + b"]"
    else:
        old = orjson.dumps(queries.image_names(parsed, exclude_access=HIDDEN_FROM_LISTS))
    assert streamed == old


def test_pages_of_every_order_are_the_whole_list(engine):
    queries = Queries(engine)
    for order in ORDERS:
        listing = ImageListing(parse_order_by(order), HIDDEN_FROM_LISTS, filters=ImageFilters(tags=("web",)))
        everything = [orjson_loads(item) for item in
                      b"".join(queries.image_stream(listing, full=False, extended=False))[1:-1].split(b",") if item]
        walked: list[str] = []
        marker = None
        while True:
            items, last, more = queries.image_page(listing, limit=333, marker=marker and marker.name,
                                                   marker_created=marker and marker.created, full=False,
                                                   extended=False)
            walked += [orjson_loads(item) for item in items]
            if not more:
                break
            marker = last
        assert walked == everything and len(everything) > COUNT // 5, order


def orjson_loads(item: bytes) -> str:
    import orjson

    return orjson.loads(item)
