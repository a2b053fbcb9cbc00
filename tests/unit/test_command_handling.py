"""Command handling: each consumer's decisions and the protocol around them (inbox, outbox, terminal
events), on SQLite, with a fake fetcher and a relay that only records what it was asked to publish.
"""

from __future__ import annotations

import functools
import uuid

import orjson
import pytest

from imagesvc.domain import tasks
from imagesvc.services.deleter.handlers import delete_image
from imagesvc.services.importer.handlers import import_image
from imagesvc.services.updater.handlers import attach_image, detach_image, update_image
from imagesvc.shared import contracts
from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts import Actor, AttachImage, DeleteImage, DetachImage, ImportImage, UpdateImage
from imagesvc.shared.db import accounts, locks
from imagesvc.shared.db.catalogue import image_lock_name
from imagesvc.shared.db import events as store
from imagesvc.shared.db.engine import read_transaction, write_transaction
from imagesvc.shared.handling import CommandConsumer
from imagesvc.shared.net.fetch import FetchError
from tests.support.origin import sample_manifest

MANIFEST_URL = "https://repo.example.com/images/{uuid}"


class FakeFetcher:
    def __init__(self):
        self.responses: dict[str, bytes | FetchError] = {}
        self.calls: list[str] = []

    def serve(self, manifest: dict) -> str:
        url = MANIFEST_URL.format(uuid=manifest["uuid"])
        self.responses[url] = orjson.dumps(manifest)
        self.responses[url + "/file"] = b"x" * 32
        return url

    def get(self, url, *, max_bytes, timeout, truncate=False):
        self.calls.append(url)
        found = self.responses.get(url, FetchError("404 Client Error: Not Found for url: " + url, "http_error"))
        if isinstance(found, FetchError):
            raise found
        return found


class RecordingRelay:
    def __init__(self):
        self.published: list[int] = []

    def publish(self, rows):
        self.published.extend(row.id for row in rows)
        return True


@pytest.fixture
def world(engine):
    with write_transaction(engine) as conn:
        accounts.create_user(conn, "root", api_key=None, is_superadmin=True)
        accounts.create_user(conn, "alice", api_key=None, is_superadmin=True)
        accounts.create_user(conn, "bob", api_key=None, is_superadmin=False)
    fetcher = FakeFetcher()
    relay = RecordingRelay()
    consumers = {
        "importer": CommandConsumer(name="importer", engine=engine, relay=relay, check_first=True,
                                    routes={"image.import": functools.partial(import_image, fetcher=fetcher)}),
        "updater": CommandConsumer(name="updater", engine=engine, relay=relay,
                                   routes={"image.update": update_image, "image.attach": attach_image,
                                           "image.detach": detach_image}),
        "deleter": CommandConsumer(name="deleter", engine=engine, relay=relay,
                                   routes={"image.delete": delete_image}),
    }
    return World(engine, fetcher, relay, consumers)


class World:
    def __init__(self, engine, fetcher, relay, consumers):
        self.engine, self.fetcher, self.relay, self.consumers = engine, fetcher, relay, consumers

    def envelope(self, command, *, user="root", message_id=None, task_id=None, reply_to=None):
        return contracts.wrap(command, correlation_id=task_id or tasks.new_task_id(user_id=1, owner_id=1, dc_id=1),
                              actor=Actor(user=user, dc="main"), message_id=message_id, reply_to=reply_to)

    def deliver(self, consumer, envelope, *, body=None):
        delivery = Delivery(body=body if body is not None else contracts.encode(envelope), queue=f"{consumer}.commands",
                            headers={}, message_id=envelope.id if envelope else None,
                            correlation_id=envelope.correlation_id if envelope else None,
                            message_type=envelope.type if envelope else None, user_id=None, redelivered=False,
                            attempt=1)
        return self.consumers[consumer](delivery)

    def run(self, consumer, command, **kwargs):
        envelope = self.envelope(command, **kwargs)
        disposition = self.deliver(consumer, envelope)
        assert disposition.outcome is Outcome.ACK
        return envelope

    def events(self, **match):
        with read_transaction(self.engine) as conn:
            found = [orjson.loads(body) for _, body in store.all_events(conn)]
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def outcome(self, envelope):
        terminal = [e for e in self.events(correlation_id=envelope.correlation_id)
                    if e["type"] in contracts.TERMINAL_TASK_EVENTS]
        assert len(terminal) == 1, terminal
        return terminal[0]

    def imported(self, name, **fields):
        manifest = sample_manifest()
        url = self.fetcher.serve(manifest)
        envelope = self.run("importer", ImportImage(name=name, manifest_url=url, **{"dc": "main", **fields}))
        assert self.outcome(envelope)["type"] == "task.succeeded", self.outcome(envelope)
        return manifest


def test_the_events_of_a_command_carry_its_reply_to(world):
    world.imported("centos")
    done = world.run("updater", UpdateImage(name="centos", desc="x"), reply_to="gateway.one")
    refused = world.run("deleter", DeleteImage(name="missing"), reply_to="gateway.two")
    assert [e["reply_to"] for e in world.events(correlation_id=done.correlation_id)] == ["gateway.one", "gateway.one"]
    assert [e["reply_to"] for e in world.events(correlation_id=refused.correlation_id)] == ["gateway.two"]


class TestImporter:
    def test_import_commits_the_image_and_its_events_together_and_counts_as_handled(self, world):
        manifest = sample_manifest()
        url = world.fetcher.serve(manifest)
        envelope = world.run("importer", ImportImage(name="centos", manifest_url=url, dc="main"))
        imported, succeeded = world.events(correlation_id=envelope.correlation_id)
        assert imported["type"] == "image.imported" and succeeded["type"] == "task.succeeded"
        assert imported["causation_id"] == succeeded["causation_id"] == envelope.id
        state = imported["payload"]["image"]
        assert (state["uuid"], state["name"], state["dc_bound"], state["dcs"]) == (manifest["uuid"], "centos", "main",
                                                                                 ["main"])
        assert state["manifest"]["name"] == "centos" and "erigones" in state["manifest"]["tags"]
        assert imported["payload"]["version"] == 1
        task = succeeded["payload"]
        assert (task["stream"], task["stream_version"], task["http_code"]) == (f"image:{manifest['uuid']}", 1, 200)
        assert task["result"]["uuid"] == manifest["uuid"] and task["result"]["dc_bound"] is True
        assert world.fetcher.calls == [url, url + "/file"]
        with read_transaction(world.engine) as conn:
            assert store.was_handled(conn, envelope.id)
        with read_transaction(world.engine) as conn:
            ids = [row_id for row_id, _ in store.all_events(conn)]
        assert world.relay.published == ids

    def test_redelivery_of_a_handled_command_has_no_second_effect(self, world):
        manifest = sample_manifest()
        envelope = world.envelope(ImportImage(name="once", manifest_url=world.fetcher.serve(manifest), dc="main"))
        for _ in range(3):
            assert world.deliver("importer", envelope).outcome is Outcome.ACK
        assert [e["type"] for e in world.events(causation_id=envelope.id)] == ["image.imported", "task.succeeded"]
        assert len(world.fetcher.calls) == 2  # the duplicates were recognised before any work

    @pytest.mark.parametrize("fields, http_code, result", [
        ({"dc": "nowhere"}, 404, {"detail": "Datacenter not found"}),
        ({"access": "7"}, 400, {"access": ["Select a valid choice. 7 is not one of the available choices."]}),
        ({"access": "1" * 5000}, 400, {"access": ["Enter a whole number."]}),  # never int() of 5000 digits
        ({"dc": None}, 400, None),  # dc required for a bound image
    ])
    def test_refusals_end_the_task_without_effect(self, world, fields, http_code, result):
        url = world.fetcher.serve(sample_manifest())
        payload = {"manifest_url": url, "dc": "main", **fields}
        payload = {k: v for k, v in payload.items() if v is not None}
        envelope = world.run("importer", ImportImage(name="refused", **payload))
        failed = world.outcome(envelope)
        assert failed["type"] == "task.failed" and failed["payload"]["http_code"] == http_code
        if result is not None:
            assert failed["payload"]["result"] == result
        assert world.events(type="image.imported") == []

    def test_existing_name_is_406_and_nothing_is_fetched(self, world):
        world.imported("taken")
        calls = len(world.fetcher.calls)
        envelope = world.run("importer", ImportImage(name="taken", manifest_url="https://repo.example.com/x", dc="main"))
        assert world.outcome(envelope)["payload"]["result"] == {"detail": "Image already exists"}
        assert len(world.fetcher.calls) == calls

    def test_the_actor_is_rechecked_by_the_consumer(self, world):
        url = world.fetcher.serve(sample_manifest())
        for user in ("bob", "nobody"):
            envelope = world.run("importer", ImportImage(name="sneaky", manifest_url=url, dc="main"), user=user)
            failed = world.outcome(envelope)["payload"]
            assert (failed["http_code"], failed["result"], failed["code"]) == (403, {"detail": "Permission denied"},
                                                                               "forbidden")
        assert world.fetcher.calls == []

    def test_manifest_values_are_validated_like_request_values(self, world):
        url = world.fetcher.serve(sample_manifest(version="v" * 20))
        envelope = world.run("importer", ImportImage(name="longversion", manifest_url=url, dc="main"))
        assert world.outcome(envelope)["payload"]["result"] == {
            "version": ["Ensure this value has at most 16 characters (it has 20)."]}

    @pytest.mark.parametrize("image_size", [-1, 2**31, "1" * 5000])
    def test_a_manifest_image_size_out_of_range_is_manifest_invalid_at_once(self, world, image_size):
        url = world.fetcher.serve(sample_manifest(image_size=image_size))
        envelope = world.envelope(ImportImage(name="badsize", manifest_url=url, dc="main"))
        assert world.deliver("importer", envelope).outcome is Outcome.ACK
        failed = world.outcome(envelope)["payload"]
        assert (failed["http_code"], failed["code"]) == (400, "manifest_invalid")
        assert world.events(type="image.imported") == []

    def test_image_limit_of_the_datacenter(self, world):
        from sqlalchemy import update

        from imagesvc.shared.db.models import Datacenter

        with write_transaction(world.engine) as conn:
            conn.execute(update(Datacenter.__table__).values(image_limit=1))
        world.imported("first")
        url = world.fetcher.serve(sample_manifest())
        envelope = world.run("importer", ImportImage(name="second", manifest_url=url, dc="main"))
        assert world.outcome(envelope)["payload"]["result"] == {
            "non_field_errors": ["Maximum number of server disk images reached"]}

    def test_poison_is_dead_lettered_and_still_ends_its_task(self, world):
        envelope = world.envelope(ImportImage(name="x"))
        body = orjson.dumps({**envelope.to_dict(), "schema_version": 0})  # versions count from 1
        disposition = world.deliver("importer", envelope, body=body)
        assert disposition.outcome is Outcome.DEAD_LETTER and "schema_version" in disposition.reason
        failed = world.outcome(envelope)
        assert (failed["type"], failed["payload"]["code"]) == ("task.failed", "invalid_message")

    def test_a_command_for_another_consumer_is_poison(self, world):
        envelope = world.envelope(DeleteImage(name="x"))
        assert world.deliver("importer", envelope).outcome is Outcome.DEAD_LETTER


class TestUpdater:
    def test_update_changes_the_supplied_fields_and_bumps_the_version(self, world):
        manifest = world.imported("img")
        envelope = world.run("updater", UpdateImage(name="img", alias="new", access="1", tags="a b"))
        updated, succeeded = world.events(correlation_id=envelope.correlation_id)
        assert updated["type"] == "image.updated"
        assert updated["payload"]["version"] == 2
        assert updated["payload"]["changed"] == ["access", "alias", "tags"]
        assert (updated["payload"]["image"]["alias"], updated["payload"]["image"]["tags"]) == ("new", ["a", "b"])
        assert succeeded["payload"]["stream_version"] == 2
        assert succeeded["payload"]["result"]["uuid"] == manifest["uuid"]

    def test_an_over_long_number_sent_straight_to_the_broker_is_refused_at_once_not_retried(self, world):
        world.imported("numbers")
        envelope = world.envelope(UpdateImage(name="numbers", access="1" * 5000, desc="x"))
        assert world.deliver("updater", envelope).outcome is Outcome.ACK
        failed = world.outcome(envelope)["payload"]
        assert (failed["http_code"], failed["result"]) == (400, {"access": ["Enter a whole number."]})

    def test_redelivered_updates_and_refusals_have_one_outcome_each(self, world):
        world.imported("twice")
        update = world.envelope(UpdateImage(name="twice", desc="first"))
        missing = world.envelope(UpdateImage(name="missing", desc="x"))
        for _ in range(3):
            assert world.deliver("updater", update).outcome is Outcome.ACK
            assert world.deliver("updater", missing).outcome is Outcome.ACK
        assert [e["type"] for e in world.events(causation_id=update.id)] == ["image.updated", "task.succeeded"]
        assert [e["type"] for e in world.events(causation_id=missing.id)] == ["task.failed"]
        # A later command still gets the next stream version.
        later = world.run("updater", UpdateImage(name="twice", desc="second"))
        assert world.events(correlation_id=later.correlation_id)[0]["payload"]["version"] == 3

    def test_an_update_that_changes_nothing_emits_only_the_task_outcome(self, world):
        world.imported("same")
        envelope = world.run("updater", UpdateImage(name="same", alias="same"))
        assert [e["type"] for e in world.events(correlation_id=envelope.correlation_id)] == ["task.succeeded"]

    @pytest.mark.parametrize("user", ["bob", "nobody"])
    def test_the_actor_is_rechecked_before_anything_else(self, world, user):
        world.imported("guarded")
        for target in ("guarded", "missing"):
            envelope = world.run("updater", UpdateImage(name=target, desc="x"), user=user)
            failed = world.outcome(envelope)["payload"]
            assert (failed["http_code"], failed["result"]) == (403, {"detail": "Permission denied"})
            envelope = world.run("deleter", DeleteImage(name=target), user=user)
            assert world.outcome(envelope)["payload"]["http_code"] == 403
        assert world.events(type="image.updated") == [] and world.events(type="image.deleted") == []

    def test_missing_image_is_404(self, world):
        envelope = world.run("updater", UpdateImage(name="ghost", alias="x"))
        assert world.outcome(envelope)["payload"]["result"] == {"detail": "Image not found"}

    def test_lock_held_by_another_task_refuses_the_update(self, world):
        manifest = world.imported("locked")
        with write_transaction(world.engine) as conn:
            assert locks.acquire(conn, image_lock_name(manifest["uuid"]), "other-task", 60)
        envelope = world.run("updater", UpdateImage(name="locked", alias="x"))
        failed = world.outcome(envelope)["payload"]
        assert (failed["http_code"], failed["result"], failed["code"]) == (400, "Task did not acquire lock",
                                                                           "image_locked")
        owner_change = world.run("updater", UpdateImage(name="locked", owner="alice"))
        assert world.outcome(owner_change)["payload"]["result"] == {"owner": ["Image has pending tasks."]}

    def test_an_expired_lease_does_not_block(self, world):
        from datetime import timedelta

        from imagesvc.shared.db.models import utcnow

        manifest = world.imported("stale-lock")
        with write_transaction(world.engine) as conn:
            assert locks.acquire(conn, image_lock_name(manifest["uuid"]), "dead-task", 60,
                                 now=utcnow() - timedelta(seconds=120))
        envelope = world.run("updater", UpdateImage(name="stale-lock", alias="fresh"))
        assert world.outcome(envelope)["type"] == "task.succeeded"

    def test_pending_image_is_417(self, world):
        from sqlalchemy import update

        from imagesvc.shared.db.models import Image

        world.imported("busy")
        with write_transaction(world.engine) as conn:
            conn.execute(update(Image.__table__).values(status=2))
        envelope = world.run("updater", UpdateImage(name="busy", desc="x"))
        assert world.outcome(envelope)["payload"]["result"] == {"detail": "Image status is not OK"}

    def test_dc_bound_true_needs_exactly_one_attached_datacenter(self, world):
        world.imported("global", dc_bound=False)
        envelope = world.run("updater", UpdateImage(name="global", dc_bound=True))
        assert world.outcome(envelope)["payload"]["result"] == {
            "dc_bound": ["Image is not attached into any datacenters."]}


class TestDeleter:
    def test_delete_removes_the_image_and_keeps_its_stream_version(self, world):
        manifest = world.imported("doomed")
        envelope = world.run("deleter", DeleteImage(name="doomed"))
        deleted, succeeded = world.events(correlation_id=envelope.correlation_id)
        assert deleted["type"] == "image.deleted" and deleted["payload"]["version"] == 2
        assert succeeded["payload"]["result"] is None
        world.imported("doomed")  # the name is free again
        again = world.events(type="image.imported")[-1]
        assert again["payload"]["image"]["uuid"] != manifest["uuid"]

    def test_reimporting_the_same_uuid_continues_its_stream(self, world):
        manifest = world.imported("phoenix")
        world.run("deleter", DeleteImage(name="phoenix"))
        url = world.fetcher.serve(manifest)
        world.run("importer", ImportImage(name="phoenix", manifest_url=url, dc="main"))
        assert world.events(type="image.imported")[-1]["payload"]["version"] == 3


def test_task_ids_are_kept_as_given(world):
    task_id = tasks.new_task_id(user_id=1, owner_id=1, dc_id=1)
    envelope = world.run("updater", UpdateImage(name="nothing"), task_id=task_id, message_id=str(uuid.uuid4()))
    assert world.outcome(envelope)["payload"]["task_id"] == task_id


class TestManifestAfterUpdate:
    def test_an_update_rebuilds_the_served_manifest(self, world):
        source = world.imported("served")
        envelope = world.run("updater", UpdateImage(name="served", alias="renamed", access=1, desc="new desc",
                                                    tags=["x"]))
        state = world.events(type="image.updated", correlation_id=envelope.correlation_id)[0]["payload"]["image"]
        served = state["manifest"]
        assert (served["name"], served["public"], served["description"]) == ("renamed", True, "new desc")
        assert served["tags"]["erigones"] == ["x"]
        assert served["files"] == source["files"] and served["uuid"] == source["uuid"]
        from imagesvc.shared.db.catalogue import SqlCatalogue

        with read_transaction(world.engine) as conn:
            stored = SqlCatalogue(conn).image_by_name("served")
        assert stored.manifest == stored.manifest_active == served

    def test_an_owner_change_leaves_the_manifest_alone(self, world):
        world.imported("owned")
        envelope = world.run("updater", UpdateImage(name="owned", owner="alice"))
        [updated] = world.events(type="image.updated", correlation_id=envelope.correlation_id)
        assert updated["payload"]["changed"] == ["owner"]
        assert updated["payload"]["image"]["manifest"]["name"] == "owned"


def test_the_read_model_rebuilt_from_the_event_store_equals_the_live_one(world):
    """Commands produce events; the projector applies them as they come (here: in reverse order,
    which exercises its gap filling); a rebuild from the store must give the same read model."""
    import random

    from imagesvc.services.projector.handlers import apply, rebuild
    from imagesvc.shared.handling import EventConsumer
    from tests.support.projection import project
    from tests.support.read_model import read_model

    for index in range(4):
        world.imported(f"img{index}")
    world.run("updater", UpdateImage(name="img1", alias="one", tags="a b"))
    world.run("updater", UpdateImage(name="img2", dc_bound=False))
    world.run("deleter", DeleteImage(name="img3"))
    world.run("updater", UpdateImage(name="ghost", desc="x"))  # a failed task too
    with read_transaction(world.engine) as conn:
        bodies = [body for _, body in store.all_events(conn)]
    projector = EventConsumer(name="projector", engine=world.engine, apply=apply, notify=lambda note: None)
    order = list(reversed(bodies))
    head = order[:5]
    random.Random(7).shuffle(head)
    order[:5] = head
    project(projector, order)

    def snapshot():
        with read_transaction(world.engine) as conn:
            return read_model(conn)

    live = snapshot()
    assert len(live[0]) == 3 and len(live[2]) == 8
    with write_transaction(world.engine) as conn:
        assert rebuild(conn, batch=3) == len(bodies)
    assert snapshot() == live
    with write_transaction(world.engine) as conn:
        rebuild(conn)
    assert snapshot() == live  # a second replay changes nothing


class TestRolesAreRecheckedByEveryConsumer:
    """A command is decided by the actor's roles as they are when it is handled, whoever put it on
    the broker: a non-SuperAdmin manages images bound to their ImageAdmin datacenters only."""

    @pytest.fixture
    def roles(self, world):
        with write_transaction(world.engine) as conn:
            accounts.create_datacenter(conn, "dc1")
            accounts.create_datacenter(conn, "dc2")
            for user, permissions in (("carol", ["admin", "image_admin"]),
                                      ("dave", ["admin", "image_admin", "image_import_admin"])):
                accounts.create_user(conn, user, api_key=None, is_superadmin=False)
                accounts.create_role(conn, f"r-{user}", permissions)
                accounts.add_member(conn, f"r-{user}", user)
                accounts.attach_role(conn, f"r-{user}", "dc1")
        world.imported("in-dc1", dc="dc1")
        world.imported("in-dc2", dc="dc2")
        world.imported("global", dc_bound=False)
        return world

    def outcome(self, world, consumer, command, user):
        payload = world.outcome(world.run(consumer, command, user=user))["payload"]
        return payload.get("http_code"), payload.get("result", {}).get("detail") if payload.get("http_code") != 200 else None

    def test_updates_and_deletes_of_images_bound_elsewhere_are_refused_without_effect(self, roles):
        world = roles
        for name in ("in-dc2", "global"):
            assert self.outcome(world, "updater", UpdateImage(name=name, desc="x"), "carol") == (
                403, "You do not have permission to perform this action.")
            assert self.outcome(world, "deleter", DeleteImage(name=name), "carol") == (
                403, "You do not have permission to perform this action.")
        assert world.events(type="image.updated") == [] and world.events(type="image.deleted") == []
        assert self.outcome(world, "updater", UpdateImage(name="in-dc1", desc="mine"), "carol") == (200, None)
        assert self.outcome(world, "deleter", DeleteImage(name="in-dc1"), "carol") == (200, None)

    def test_imports_need_image_import_admin_in_the_target_datacenter(self, roles):
        world = roles
        url = world.fetcher.serve(sample_manifest())
        assert self.outcome(world, "importer", ImportImage(name="by-carol", manifest_url=url, dc="dc1"), "carol") == (
            403, "You do not have permission to perform this action.")
        # dc2 is private and they hold nothing there: it does not exist for them.
        assert self.outcome(world, "importer", ImportImage(name="by-dave", manifest_url=url, dc="dc2"), "dave") == (
            404, "Datacenter not found")
        assert world.fetcher.calls.count(url) == 0  # refused before anything was fetched
        assert self.outcome(world, "importer", ImportImage(name="by-dave", manifest_url=url, dc="dc1",
                                                           dc_bound=False), "dave") == (200, None)
        imported = world.events(type="image.imported")[-1]["payload"]["image"]
        assert (imported["name"], imported["dc_bound"]) == ("by-dave", "dc1")  # dc_bound dropped: not theirs

    def test_a_role_taken_away_stops_the_next_command(self, roles):
        world = roles
        assert self.outcome(world, "updater", UpdateImage(name="in-dc1", desc="1"), "carol") == (200, None)
        with write_transaction(world.engine) as conn:
            accounts.detach_role(conn, "r-carol", "dc1")
        assert self.outcome(world, "updater", UpdateImage(name="in-dc1", desc="2"), "carol") == (
            403, "Permission denied")


class TestAttachments:
    def test_attach_and_detach_clear_dc_bound_and_record_the_change(self, world):
        with write_transaction(world.engine) as conn:
            accounts.create_datacenter(conn, "dc2")
        world.imported("shared")
        attach = world.run("updater", AttachImage(name="shared", dc="dc2"))
        updated, succeeded = world.events(correlation_id=attach.correlation_id)
        assert (updated["payload"]["changed"], updated["payload"]["version"]) == (["dc_bound", "dcs"], 2)
        assert (updated["payload"]["image"]["dc_bound"], updated["payload"]["image"]["dcs"]) == (None, ["dc2", "main"])
        assert (succeeded["payload"]["http_code"], succeeded["payload"]["dc"]) == (201, "dc2")
        assert succeeded["payload"]["result"]["dc_bound"] is True  # the original's answer (reference §13.30)
        again = world.outcome(world.run("updater", AttachImage(name="shared", dc="dc2")))["payload"]
        assert (again["http_code"], again["result"]) == (406, {"detail": "Image already exists"})
        detach = world.run("updater", DetachImage(name="shared", dc="main"))
        updated, succeeded = world.events(correlation_id=detach.correlation_id)
        assert (updated["payload"]["changed"], updated["payload"]["image"]["dcs"]) == (["dcs"], ["dc2"])
        assert succeeded["payload"]["http_code"] == 200
        gone = world.outcome(world.run("updater", DetachImage(name="shared", dc="main")))["payload"]
        assert (gone["http_code"], gone["result"]) == (404, {"detail": "Image not found"})

    @pytest.mark.parametrize("command, user, http_code, detail", [
        (AttachImage(name="shared", dc="main"), "bob", 403, "Permission denied"),
        (AttachImage(name="shared", dc="nowhere"), "root", 404, "Datacenter not found"),
        (AttachImage(name="missing", dc="main"), "root", 404, "Image not found"),
        (DetachImage(name="shared", dc="main"), "nobody", 403, "Permission denied"),
    ])
    def test_refusals(self, world, command, user, http_code, detail):
        world.imported("shared", dc_bound=False)
        failed = world.outcome(world.run("updater", command, user=user))["payload"]
        assert (failed["http_code"], failed["result"]) == (http_code, {"detail": detail})
        assert world.events(type="image.updated") == []


@pytest.mark.parametrize("publisher, actor, trusted", [
    ("svc", "root", True),      # imagesvc itself (a gateway, or a consumer's retry) acts for anybody
    ("root", "root", True),     # a program acting as itself
    ("alice", "root", False),   # ... but not as somebody else
    (None, "root", False),      # nobody vouched for the message
])
def test_a_command_acts_for_its_actor_only_if_the_broker_vouches_for_the_publisher(world, publisher, actor, trusted):
    world.imported("vouched")
    consumer = CommandConsumer(name="updater", engine=world.engine, relay=world.relay,
                               routes={"image.update": update_image}, trusted_publishers=frozenset({"svc"}))
    envelope = world.envelope(UpdateImage(name="vouched", desc="changed"), user=actor)
    delivery = Delivery(body=contracts.encode(envelope), queue="updater.commands", headers={}, message_id=envelope.id,
                        correlation_id=envelope.correlation_id, message_type=envelope.type, user_id=publisher,
                        redelivered=False, attempt=1, publisher=publisher)
    assert consumer(delivery).outcome is Outcome.ACK
    outcome = world.outcome(envelope)["payload"]
    if trusted:
        assert outcome["http_code"] == 200
    else:
        assert (outcome["http_code"], outcome["result"], outcome["code"]) == (
            403, {"detail": "Permission denied"}, "actor_not_trusted")
        assert world.events(type="image.updated") == []
        # The refusal does not record the claimed actor as the task's user.
        assert outcome["user"] is None and world.outcome(envelope)["actor"] is None


def test_a_command_reusing_a_finished_tasks_id_gets_no_outcome_and_changes_nothing(world):
    world.imported("victim")
    first = world.run("updater", UpdateImage(name="victim", desc="first"))
    reused = world.envelope(UpdateImage(name="victim", desc="second"), task_id=first.correlation_id)
    disposition = world.deliver("updater", reused)
    assert disposition.outcome is Outcome.DEAD_LETTER and "belongs to another command" in disposition.reason
    assert [e["payload"]["image"]["desc"] for e in world.events(type="image.updated")] == ["first"]
    assert world.outcome(first)["payload"]["http_code"] == 200  # the task still has its one outcome
    # The first command's own redelivery is still a plain duplicate.
    assert world.deliver("updater", first).outcome is Outcome.ACK
