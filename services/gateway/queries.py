"""What the gateway reads (the read model, accounts, datacenters) and its command journal.

Blocking functions: the routes call them through a thread pool. Image documents are stored
pre-encoded by the projector, so a list is a concatenation of bytes, not an object graph.
"""

from __future__ import annotations

import time
from datetime import datetime
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence

import orjson
from sqlalchemy import Engine, and_, bindparam, func, insert, literal, select, tuple_

from imagesvc.shared.db import accounts
from imagesvc.shared.db import repositories as stored_repositories
from imagesvc.shared.db import locks, nodes
from imagesvc.shared.db import vms as inventory
from imagesvc.shared.db.catalogue import datacenter_record, storable, user_record
from imagesvc.shared.db.dialect import insert_ignore
from imagesvc.shared.db.engine import read_transaction, single_statement, write_transaction
from imagesvc.shared.db.models import AuthToken, Datacenter, ReadImage, ReadTask, StoredEvent, SubmittedCommand, User, utcnow
from imagesvc.shared.db.records import DatacenterRecord, Grants, RepositoryRecord, UserRecord
from imagesvc.services.gateway.listing import ImageFilters

_users = User.__table__
_dcs = Datacenter.__table__
_images = ReadImage.__table__
_tasks = ReadTask.__table__
_journal = SubmittedCommand.__table__
_events = StoredEvent.__table__

# Statements built once (building them per request is a measurable share of the gateway's CPU).
_USER_BY_DIGEST = select(_users).where(_users.c.api_key_digest == bindparam("digest"))
_tokens = AuthToken.__table__
_USER_BY_TOKEN = (select(_users, _tokens.c.expires_at.label("token_expires_at"))
                  .join(_tokens, _tokens.c.user_id == _users.c.id).where(_tokens.c.digest == bindparam("digest")))
_USER_BY_NAME = select(_users).where(_users.c.username == bindparam("username"))
_DC_BY_NAME = select(_dcs).where(_dcs.c.name == bindparam("name"))
_DEFAULT_DC = select(_dcs).where(_dcs.c.is_default.is_(True))
_DC_BY_ID = select(_dcs).where(_dcs.c.id == bindparam("id"))
_IMAGE_BY_NAME = select(_images.c.uuid, _images.c.name, _images.c.owner, _images.c.dc_bound, _images.c.status,
                        _images.c.doc, _images.c.dcs, _images.c.version).where(_images.c.name == bindparam("name"))
# A command's pre-checks need everything but the (large) public document.
_IMAGE_FACTS_BY_NAME = select(_images.c.uuid, _images.c.name, _images.c.owner, _images.c.dc_bound, _images.c.status,
                              _images.c.dcs, _images.c.version).where(_images.c.name == bindparam("name"))
_IMAGE_UUID_TAKEN = select(_images.c.uuid).where(_images.c.uuid == bindparam("uuid"))
_TASK = select(_tasks).where(_tasks.c.task_id == bindparam("task_id"))
_JOURNALED = select(_journal).where(_journal.c.task_id == bindparam("task_id"))
_SUBMITTED = select(_journal.c.task_id).where(_journal.c.message_id == bindparam("message_id"))
# Every event a command's handling stores names the command as its cause (ix_events_causation_id).
_CAUSED_BY = select(_events.c.correlation_id).where(_events.c.causation_id == bindparam("message_id")).limit(1)

#: Sortable fields of ``GET /image/`` and their columns.
ORDER_FIELDS = {"name": _images.c.name, "created": _images.c.created}
#: Rows per chunk of a streamed list (each chunk its own short keyset query).
STREAM_BATCH = 500


@dataclass(frozen=True)
class ImageView:
    uuid: str
    name: str
    owner: str
    dc_bound: str | None
    status: int
    doc: bytes
    dcs: bytes
    #: The image's event stream version as projected (its ``ETag``); 0 when unknown.
    version: int = 0

    @property
    def attached(self) -> list[str]:
        return orjson.loads(self.dcs)

    def encoded(self, *, extended: bool) -> bytes:
        """The image object; with ``extended`` the ``dcs`` list is appended to it."""
        return with_dcs(self.doc, self.dcs) if extended else self.doc


def with_dcs(doc: bytes, dcs: bytes) -> bytes:
    """An encoded image object extended with its encoded ``dcs`` list (the ``extended`` view)."""
    return doc[:-1] + b',"dcs":' + dcs + b"}"


@dataclass(frozen=True)
class TaskView:
    task_id: str
    status: str
    http_code: int
    result: Any
    user: str | None
    owner: str | None
    #: A running task's latest progress (``{"done", "total"}``), if it reports any.
    progress: Any = None
    #: The datacenter the task is placed in.
    dc: str | None = None


class Queries:
    """``cache_seconds``: how long accounts and datacenters looked up by name are reused by this
    process (they change rarely, and every consumer re-checks them authoritatively)."""

    def __init__(self, engine: Engine, *, cache_seconds: float = 0.0):
        self.engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple, tuple[float, Any]] = {}

    def _peek(self, key: tuple):
        hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    # A cache read without I/O, so the event loop can try it before going to the thread pool.

    def cached_default_datacenter(self) -> DatacenterRecord | None:
        return self._peek(("default-dc",))

    def _cached(self, key: tuple, load):
        """``load()``'s value, reused for ``cache_seconds``; misses (None) are never cached."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if value is not None and self._cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self._cache_seconds, value)
        return value

    # --- accounts ------------------------------------------------------------------------------

    def user_by_key_digest(self, digest: str) -> UserRecord | None:
        """The user of an API key (cached like the other accounts: a revoked key stops working
        within ``cache_seconds``)."""
        def load() -> UserRecord | None:
            with single_statement(self.engine) as conn:
                return user_record(conn.execute(_USER_BY_DIGEST, {"digest": digest}).first())

        return self._cached(("key", digest), load)

    def cached_user_by_key_digest(self, digest: str) -> UserRecord | None:
        return self._peek(("key", digest))

    def user_by_token_digest(self, digest: str) -> tuple[UserRecord, datetime] | None:
        """The user of a login token and when the token expires (cached like the keys)."""
        def load() -> tuple[UserRecord, datetime] | None:
            with single_statement(self.engine) as conn:
                row = conn.execute(_USER_BY_TOKEN, {"digest": digest}).first()
            return None if row is None else (user_record(row), row.token_expires_at)

        return self._cached(("token", digest), load)

    def cached_user_by_token_digest(self, digest: str) -> tuple[UserRecord, datetime] | None:
        return self._peek(("token", digest))

    def login_candidate(self, username: str) -> tuple[UserRecord, str | None] | None:
        """A user and their password hash, for a login (never cached)."""
        if not storable(username, 150):
            return None
        with single_statement(self.engine) as conn:
            row = conn.execute(_USER_BY_NAME, {"username": username}).first()
        return None if row is None else (user_record(row), row.password_hash)

    def create_token(self, user_id: int, digest: str, expires_at: datetime) -> None:
        """The user's one token, as in the original: logging in again replaces the previous one."""
        # The gateway's connections do not wait for the WAL flush: a token lost in a database
        # crash only means logging in again.
        with write_transaction(self.engine) as conn:
            conn.execute(_tokens.delete().where(_tokens.c.user_id == user_id))
            conn.execute(insert(_tokens).values(digest=digest, user_id=user_id, created_at=utcnow(),
                                                expires_at=expires_at))

    # --- account administration (configuration, written in one transaction) -------------------

    def administer(self, write) -> None:
        """``write(conn)`` in one write transaction; the process's account cache is dropped after
        it, so this gateway sees the change at once (others within ``cache_seconds``)."""
        with write_transaction(self.engine) as conn:
            write(conn)
        self._cache.clear()

    def administered(self, read):
        """``read(conn)`` on a fresh connection (never cached)."""
        with read_transaction(self.engine) as conn:
            return read(conn)

    def delete_token(self, digest: str) -> None:
        with single_statement(self.engine, write=True) as conn:
            conn.execute(_tokens.delete().where(_tokens.c.digest == digest))
        self._cache.pop(("token", digest), None)

    def user(self, username: str) -> UserRecord | None:
        if not storable(username, 150):
            return None

        def load() -> UserRecord | None:
            with single_statement(self.engine) as conn:
                return user_record(conn.execute(_USER_BY_NAME, {"username": username}).first())

        return self._cached(("user", username), load)

    def grants(self, user_id: int) -> Grants:
        """What the user holds through ownership and roles (cached like the accounts)."""
        def load() -> Grants:
            with single_statement(self.engine) as conn:
                return accounts.load_grants(conn, user_id)

        return self._cached(("grants", user_id), load)

    def cached_grants(self, user_id: int) -> Grants | None:
        return self._peek(("grants", user_id))

    def datacenter(self, name: str) -> DatacenterRecord | None:
        if not storable(name, 16):
            return None

        def load() -> DatacenterRecord | None:
            with single_statement(self.engine) as conn:
                return datacenter_record(conn.execute(_DC_BY_NAME, {"name": name}).first())

        return self._cached(("dc", name), load)

    def datacenter_by_id(self, dc_id: int) -> DatacenterRecord | None:
        def load() -> DatacenterRecord | None:
            with single_statement(self.engine) as conn:
                return datacenter_record(conn.execute(_DC_BY_ID, {"id": dc_id}).first())

        return self._cached(("dc-id", dc_id), load)

    def default_datacenter(self) -> DatacenterRecord:
        def load() -> DatacenterRecord | None:
            with single_statement(self.engine) as conn:
                return datacenter_record(conn.execute(_DEFAULT_DC).first())

        found = self._cached(("default-dc",), load)
        if found is None:
            raise LookupError("no default datacenter: run `imagesvc db upgrade`")
        return found

    # --- images --------------------------------------------------------------------------------

    def image(self, name: str, *, document: bool = True) -> ImageView | None:
        """The image named ``name``; without ``document`` its ``doc`` is left empty (a command's
        pre-checks do not need it)."""
        with single_statement(self.engine) as conn:
            row = conn.execute(_IMAGE_BY_NAME if document else _IMAGE_FACTS_BY_NAME, {"name": name}).first()
        if row is None:
            return None
        return ImageView(row.uuid, row.name, row.owner, row.dc_bound, row.status,
                         row.doc.encode() if document else b"", row.dcs.encode(), row.version)

    def image_names(self, order: Sequence[tuple[str, bool]], *, exclude_access: Sequence[int],
                    bound_to: Collection[str] | None = None, attached_to: str | None = None) -> list[str]:
        """``bound_to``: only images bound to these datacenters (None: every image);
        ``attached_to``: only images attached to this datacenter."""
        with read_transaction(self.engine) as conn:
            query = _scoped(select(_images.c.name), exclude_access, bound_to, attached_to)
            return list(conn.execute(query.order_by(*_order(order))).scalars())

    def image_docs(self, order: Sequence[tuple[str, bool]], *, exclude_access: Sequence[int],
                   extended: bool, bound_to: Collection[str] | None = None,
                   attached_to: str | None = None) -> list[bytes]:
        columns = [_images.c.doc, _images.c.dcs] if extended else [_images.c.doc]
        with read_transaction(self.engine) as conn:
            query = _scoped(select(*columns), exclude_access, bound_to, attached_to).order_by(*_order(order))
            rows = conn.execute(query).all()
        if extended:
            return [with_dcs(row[0].encode(), row[1].encode()) for row in rows]
        return [row[0].encode() for row in rows]

    def image_page(self, listing: ImageListing, *, limit: int, marker: str | None, full: bool,
                   extended: bool, marker_created: datetime | None = None
                   ) -> tuple[list[bytes], PageKey | None, bool]:
        """One page of an image list: the encoded items (names as JSON strings, or objects), the
        sort key of its last image (the next page's marker) and whether more follow. Keyset
        paging: the rows strictly after the marker's sort key in the listing's order, never an
        OFFSET.

        The marker's row is not needed when the key is known without it: an order by name only
        takes ``marker`` itself (any string: the rows after it), and an order by ``created``
        takes ``marker_created`` with it; so an image removed (or hidden) since the previous page
        breaks nothing. Only a marker given without its ``created`` is looked up, and raises
        ``UnknownMarker`` when it names no image the listing's caller may see (filters aside)."""
        order = listing.keyset_order()
        key = None
        if marker is not None:
            key = listing.marker_key(marker, marker_created)
            if key is None:
                with single_statement(self.engine) as conn:
                    found = conn.execute(listing.visible(select(*[column for column, _ in order]))
                                         .where(_images.c.name == marker)).first()
                if found is None:
                    raise UnknownMarker(marker)
                key = tuple(found)
        # One more row than asked for tells whether another page follows.
        rows = self._rows_after(listing, _image_columns(full, extended), key, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        encode = _encoder(full, extended)
        last = PageKey(rows[-1][-2], rows[-1][-1]) if rows else None
        return [encode(row) for row in rows], last, more

    def _rows_after(self, listing: ImageListing, columns: Sequence[Any], key: tuple | None, limit: int) -> list:
        """At most ``limit`` rows of ``columns`` (then ``name`` and ``created``) strictly after
        the sort ``key`` (None: from the start) in the listing's order: one short read on a
        connection given back to the pool before this returns."""
        order = listing.keyset_order()
        query = listing.select([*columns, _images.c.name, _images.c.created]).order_by(*_clauses(order))
        rows: list = []
        with single_statement(self.engine) as conn:
            for case in ([None] if key is None else _after(order, key)):
                chosen = query if case is None else query.where(case)
                rows += conn.execute(chosen.limit(limit - len(rows))).all()
                if len(rows) >= limit:
                    break
        return rows

    def image_stream(self, listing: ImageListing, *, full: bool, extended: bool,
                     batch: int = STREAM_BATCH) -> Iterator[bytes]:
        """The whole image list as the chunks of its JSON array (``[``, the items, ``]``), read
        ``batch`` rows at a time: the list is never held whole.

        Each batch is its own keyset query (the rows after the previous batch's last key) on a
        connection taken from the pool and given back before the chunk is yielded: a slow reader
        of the answer holds no connection and no transaction while it is slow. The first batch
        is read at the first ``next()`` (so a database failure is raised before anything is
        sent). The batches are consistent with each other as the pages of a walk are: a quiet
        catalogue gives exactly the bytes of one read; an image added or removed meanwhile is
        listed or left out at most once, never repeated."""
        encode = _encoder(full, extended)
        columns = _image_columns(full, extended)
        order = listing.keyset_order()
        opening = b"["
        key = None
        while True:
            rows = self._rows_after(listing, columns, key, batch)
            if rows:
                yield opening + b",".join(encode(row) for row in rows)
                opening = b","
                last = PageKey(rows[-1][-2], rows[-1][-1])
                key = last.values(order)
            if len(rows) < batch:
                break
        yield b"]" if opening == b"," else b"[]"

    def image_uuid_taken(self, uuid: str) -> bool:
        if not storable(uuid, 36):
            return False
        with single_statement(self.engine) as conn:
            return conn.execute(_IMAGE_UUID_TAKEN, {"uuid": uuid}).first() is not None

    # --- the snapshot-image pre-checks (reference §3.6) --------------------------------------

    def vm(self, hostname_or_uuid: str) -> inventory.VmRecord | None:
        with single_statement(self.engine) as conn:
            return inventory.get_vm(conn, hostname_or_uuid)

    def node_operational(self, hostname: str) -> bool:
        with single_statement(self.engine) as conn:
            found = nodes.get(conn, hostname)
        return found is not None and found.operational

    def snapshot(self, vm_uuid: str, disk_id: int, name: str) -> inventory.SnapshotRecord | None:
        with single_statement(self.engine) as conn:
            return inventory.get_snapshot(conn, vm_uuid, disk_id, name)

    def lock_holder(self, name: str) -> str | None:
        with single_statement(self.engine) as conn:
            found = locks.holder(conn, name)
        return found.owner if found else None

    def vms_using_image(self, image_uuid: str, dcs: Collection[str], *,
                        replicas: bool = True) -> list[inventory.VmRecord]:
        """The live VMs in ``dcs`` with a disk made from the image, by hostname (other systems'
        facts, read as they are now: never cached); ``replicas=False`` leaves replicas out."""
        with read_transaction(self.engine) as conn:
            return inventory.vms_using_image(conn, image_uuid, dcs, replicas=replicas)

    # --- remote repositories -------------------------------------------------------------------

    def repositories(self, names: Collection[str], *, with_images: bool = False) -> dict[str, RepositoryRecord]:
        """The stored state of these repositories (the ones never refreshed are missing)."""
        with read_transaction(self.engine) as conn:
            return stored_repositories.load(conn, names, with_images=with_images)

    # --- tasks ---------------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskView | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(_TASK, {"task_id": task_id}).first()
            if row is not None:
                return _task_view(row)
            journal = conn.execute(_JOURNALED, {"task_id": task_id}).first()
        if journal is not None:
            return TaskView(task_id, "PENDING", 201, None, journal.user, journal.owner, dc=journal.dc)
        return None

    def command_task(self, message_id: str) -> TaskView | None:
        """The task of the command published as ``message_id``, wherever it is already known:
        the event store (its handling stored anything: a consumer records nothing without an
        event caused by the command, except an image-store refresh's lock), else the journal.
        Its state as the read model has it, PENDING until the projector has it. None: nothing
        knows it (never published, or published and neither handled nor journaled yet)."""
        with read_transaction(self.engine) as conn:
            params = {"message_id": message_id}
            task_id = conn.execute(_CAUSED_BY, params).scalar() or conn.execute(_SUBMITTED, params).scalar()
            if task_id is None:
                return None
            row = conn.execute(_TASK, {"task_id": task_id}).first()
        return _task_view(row) if row is not None else TaskView(task_id, "PENDING", 201, None, None, None)

    def record_submission(self, *, message_id: str, task_id: str, command_type: str, object_name: str, user: str,
                          owner: str | None, dc: str | None, routing_key: str, body: bytes) -> None:
        # One autocommit statement. A gateway process's connections do not wait for the WAL flush
        # (see imagesvc.bootstrap): the command itself is durable at the broker, and this row only
        # makes the task readable before a consumer has handled it. In ``serve``, whose in-memory
        # broker keeps nothing, the row is also what start-up recovery publishes again; its
        # connections wait for the flush.
        # A keyed command repeated (Idempotency-Key) is journaled once: the first row stays.
        with single_statement(self.engine, write=True) as conn:
            insert_ignore(conn, _journal, {
                "message_id": message_id, "task_id": task_id, "type": command_type, "object_name": object_name[:64],
                "user": user, "owner": owner, "dc": dc, "created_at": utcnow(), "routing_key": routing_key,
                "body": body.decode(),
            })


class UnknownMarker(LookupError):
    """A page's ``marker`` names nothing the caller may see in that list."""


@dataclass(frozen=True)
class PageKey:
    """Where a page (or a streamed batch) ended: its last image's name and ``created``."""

    name: str
    created: datetime

    def values(self, order: Sequence[tuple[Any, bool]]) -> tuple:
        """The key's values for the columns of a keyset order."""
        return tuple(self.created if column is _images.c.created else self.name for column, _ in order)


@dataclass(frozen=True)
class ImageListing:
    """Which images a list holds and in which order: the caller's visibility (``exclude_access``,
    ``bound_to``: only images bound to these datacenters, None for all; ``attached_to``: only
    images attached to this datacenter), then the ``filters`` narrowing it."""

    order: Sequence[tuple[str, bool]]
    exclude_access: Sequence[int]
    bound_to: Collection[str] | None = None
    attached_to: str | None = None
    filters: ImageFilters = ImageFilters()

    def visible(self, query):
        return _scoped(query, self.exclude_access, self.bound_to, self.attached_to)

    def select(self, columns: Sequence[Any]):
        return _filtered(self.visible(select(*columns)), self.filters)

    @property
    def needs_created(self) -> bool:
        """Whether a marker's sort key includes its ``created`` (else the name alone is the key)."""
        return any(column is _images.c.created for column, _ in self.keyset_order())

    def marker_key(self, marker: str, marker_created: datetime | None) -> tuple | None:
        """The sort key a marker stands for, when known without its row (None: look it up)."""
        if not self.needs_created:
            return (marker,)
        if marker_created is None:
            return None
        return PageKey(marker, marker_created).values(self.keyset_order())

    def keyset_order(self) -> list[tuple[Any, bool]]:
        """The order as (column, descending), ending at the unique name: a total order whose key
        a marker row gives (a field after ``name`` never decides, a repeated one never again)."""
        seen: set[str] = set()
        order: list[tuple[Any, bool]] = []
        for field, descending in self.order:
            if field in seen:
                continue
            seen.add(field)
            order.append((ORDER_FIELDS[field], descending))
            if field == "name":
                return order
        return [*order, (_images.c.name, False)]


def _image_columns(full: bool, extended: bool) -> list[Any]:
    if extended:
        return [_images.c.doc, _images.c.dcs]
    return [_images.c.doc] if full else [_images.c.name]


def _encoder(full: bool, extended: bool) -> Callable[[Any], bytes]:
    if extended:
        return lambda row: with_dcs(row[0].encode(), row[1].encode())
    if full:
        return lambda row: row[0].encode()
    return lambda row: orjson.dumps(row[0])


def _clauses(order: Sequence[tuple[Any, bool]]) -> list:
    return [column.desc() if descending else column.asc() for column, descending in order]


def _after(order: Sequence[tuple[Any, bool]], key: Sequence[Any]) -> list:
    """The conditions selecting the rows strictly after ``key`` (the marker row's values of the
    order's columns) in ``order``, as a list whose parts are read one after the other: the rows
    the first one selects all come before those of the second, and so on.

    When every column sorts one way it is one row comparison, which PostgreSQL turns into the
    start of an index scan over those columns (SQLite too). With mixed directions (``-created``:
    newest first, names ascending within a second) no row comparison says it, and an OR of
    per-column cases makes the planner sort what it finds; instead each case is its own plain
    conjunction, read in turn: the marker's own ``created`` with the names after it, then the
    older ``created`` values — each an index range."""
    directions = {descending for _, descending in order}
    if len(directions) == 1:
        columns = tuple_(*[column for column, _ in order])
        values = tuple_(*[literal(value, column.type) for (column, _), value in zip(order, key)])
        return [columns < values if directions == {True} else columns > values]
    cases = []
    for position in reversed(range(len(order))):
        column, descending = order[position]
        equal = [earlier == key[index] for index, (earlier, _) in enumerate(order[:position])]
        cases.append(and_(*equal, column < key[position] if descending else column > key[position]))
    return cases


_LIKE_ESCAPE = "!"


def _like_literal(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern (escape character ``!``)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _filtered(query, filters: ImageFilters):
    """The image filters. ``ostype`` and ``tags`` live only in the stored document: its encoding
    (compact JSON, keys in a fixed order, every quote inside a string escaped) makes
    ``,"ostype":N,`` and a ``"tag"`` between ``,"tags":[`` and ``],"status":`` exact matches."""
    if filters.status is not None:
        query = query.where(_images.c.status == filters.status)
    if filters.access is not None:
        query = query.where(_images.c.access == filters.access)
    if filters.owner is not None:
        query = query.where(_images.c.owner == filters.owner)
    if filters.name is not None:
        # Without regard to case (names are ASCII); lower() on both sides for SQLite and PostgreSQL alike.
        query = query.where(func.lower(_images.c.name).like(_like_literal(filters.name.lower()) + "%",
                                                            escape=_LIKE_ESCAPE))
    if filters.ostype is not None:
        query = query.where(_images.c.doc.like(f'%,"ostype":{int(filters.ostype)},%'))
    for tag in filters.tags:
        query = query.where(_images.c.doc.like(
            '%,"tags":[%' + _like_literal(orjson.dumps(tag).decode()) + '%],"status":%', escape=_LIKE_ESCAPE))
    if filters.attached_to is not None:
        query = query.where(_images.c.dcs.contains(orjson.dumps(filters.attached_to).decode(), autoescape=True))
    return query


def _task_view(row) -> TaskView:
    return TaskView(row.task_id, row.status, row.http_code, row.result, row.user, row.owner, row.progress, row.dc)


def _scoped(query, exclude_access: Sequence[int], bound_to: Collection[str] | None, attached_to: str | None = None):
    query = query.where(_images.c.access.notin_(list(exclude_access)))
    if bound_to is not None:
        query = query.where(_images.c.dc_bound.in_(sorted(bound_to)))
    if attached_to is not None:
        # ``dcs`` is a JSON list of names: match the quoted name (LIKE wildcards escaped).
        query = query.where(_images.c.dcs.contains(orjson.dumps(attached_to).decode(), autoescape=True))
    return query


def _order(order: Sequence[tuple[str, bool]]) -> list:
    clauses = [ORDER_FIELDS[name].desc() if descending else ORDER_FIELDS[name].asc() for name, descending in order]
    if not any(name == "name" for name, _ in order):
        clauses.append(_images.c.name.asc())  # a stable order among equal timestamps
    return clauses

