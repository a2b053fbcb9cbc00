"""shared.contracts: every registered message type round-trips, and bad deliveries are poison."""

from __future__ import annotations

import orjson
import pytest

from imagesvc.shared import contracts
from imagesvc.shared.contracts import (
    MESSAGE_TYPES,
    VmRemoved,
    VmSnapshotRemoved,
    VmSnapshotUpdated,
    VmUpdated,
    UNSET,
    Actor,
    AttachImage,
    CreateImageFromSnapshot,
    DetachImage,
    DeleteImage,
    RefreshImageRepositories,
    Envelope,
    ImageDeleted,
    ImageImported,
    ImageUpdated,
    ImportImage,
    NodeRemoved,
    NodeUpdated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    UpdateImage,
)
from imagesvc.shared.errors import PoisonMessage

UUID = "2f0c7c3e-1111-2222-3333-444455556666"
TASK_ID = "1e1u1-9c1d2e3f-77aa-4c1e-9b0d"
IMAGE_STATE = {
    "dc_bound": None, "name": "centos-7", "uuid": UUID, "alias": "centos-7", "version": "20200101",
    "owner": "admin", "access": 1, "desc": "", "ostype": 1, "size": 10240, "resize": True, "deploy": False,
    "tags": [], "status": 1, "created": "2020-01-02T10:11:12Z", "dcs": ["main"],
    "changed": "2020-01-02T10:11:12Z", "manifest": {"uuid": UUID},
}

#: One representative instance per registered type. A new type needs a sample here.
SAMPLES = {
    "image.import": ImportImage(
        name="centos-7", manifest_url=f"https://repo.test/images/{UUID}", file_url=None, alias="c7",
        access="1", owner="admin", desc="d", version="1.0", resize=True, deploy="false", tags=["a", "b"],
        dc_bound=True, dc="main",
    ),
    "image.update": UpdateImage(name="centos-7", alias="c7", tags="a,b", dc_bound=False),
    "image.delete": DeleteImage(name="centos-7"),
    "image.attach": AttachImage(name="centos-7", dc="prague"),
    "image.detach": DetachImage(name="centos-7", dc="prague"),
    "image.snapshot": CreateImageFromSnapshot(name="web01-daily", vm="0b1c2d3e-1111-2222-3333-444455556666",
                                              snapshot="daily", disk_id=1, desc="nightly"),
    "imagestore.refresh": RefreshImageRepositories(repositories={"danubecloud": "https://images.danube.cloud"},
                                                   name="danubecloud"),
    "image.imported": ImageImported(image=IMAGE_STATE, version=1),
    "image.updated": ImageUpdated(image=IMAGE_STATE, version=2, changed=["alias", "tags"]),
    "image.deleted": ImageDeleted(uuid=UUID, name="centos-7", version=3),
    "task.progress": TaskProgress(task_id=TASK_ID, command="image.import", object_name="centos-7", user="admin",
                                  owner="admin", dc="main", done=1048576, total=402653184),
    "task.started": TaskStarted(task_id=TASK_ID, command="image.import", object_name="centos-7", user="admin",
                                owner="admin", dc="main"),
    "task.succeeded": TaskSucceeded(task_id=TASK_ID, command="image.update", object_name="centos-7", user="admin",
                                    owner="admin", dc="main", stream=f"image:{UUID}", stream_version=2,
                                    http_code=200, result={"name": "centos-7"}),
    "task.failed": TaskFailed(task_id=TASK_ID, command="image.delete", object_name="centos-7", http_code=423,
                              result={"detail": "Task did not acquire lock"}, code="locked"),
    "node.updated": NodeUpdated(hostname="cn1.example.com", status="maintenance", uuid=UUID, address="10.0.0.5",
                                changed_at="2026-11-27T10:00:00.5+01:00"),
    "node.removed": NodeRemoved(hostname="cn1.example.com", changed_at="2026-11-27T10:00:00Z"),
    "vm.updated": VmUpdated(uuid=UUID, hostname="web01.example.com", dc="main", node="cn1.example.com",
                            status="running", ostype=1, changed_at="2026-11-27T10:00:00Z",
                            disks=[{"disk_id": 1, "size": 10240, "image_uuid": UUID},
                                   {"disk_id": 2, "size": 2048, "image_uuid": None}]),
    "vm.removed": VmRemoved(uuid=UUID, changed_at="2026-11-27T10:00:00Z"),
    "vm.snapshot.updated": VmSnapshotUpdated(vm_uuid=UUID, disk_id=1, name="daily-1", status="ok",
                                             changed_at="2026-11-27T10:00:00Z"),
    "vm.snapshot.removed": VmSnapshotRemoved(vm_uuid=UUID, disk_id=1, name="daily-1",
                                             changed_at="2026-11-27T10:00:00Z"),
}


def test_every_registered_message_type_has_a_sample():
    assert set(SAMPLES) == set(MESSAGE_TYPES)


def test_samples_are_instances_of_their_registered_class():
    for type_name, sample in SAMPLES.items():
        assert type(sample) is MESSAGE_TYPES[type_name]


def test_type_values_are_unique():
    types = [cls.TYPE for cls in MESSAGE_TYPES.values()]
    assert len(types) == len(set(types))


def test_registry_keys_are_the_class_types():
    for type_name, cls in MESSAGE_TYPES.items():
        assert cls.TYPE == type_name


def test_commands_and_events_partition_the_registry():
    assert set(contracts.COMMAND_TYPES) | set(contracts.EVENT_TYPES) == set(MESSAGE_TYPES)
    assert not set(contracts.COMMAND_TYPES) & set(contracts.EVENT_TYPES)


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_message_round_trips_through_wrap_encode_decode_parse(type_name):
    message = SAMPLES[type_name]
    actor = Actor(user="admin", dc="main")
    envelope = contracts.wrap(message, correlation_id=TASK_ID, causation_id="cause-1", actor=actor)

    decoded = contracts.decode(contracts.encode(envelope))

    assert decoded == envelope
    assert decoded.type == type_name
    assert decoded.correlation_id == TASK_ID
    assert decoded.causation_id == "cause-1"
    assert decoded.actor == actor
    assert decoded.schema_version == contracts.SCHEMA_VERSION
    parsed = contracts.parse(decoded)
    assert type(parsed) is type(message)
    assert parsed == message


def test_wrap_uses_a_given_message_id_and_otherwise_a_fresh_one():
    message = SAMPLES["image.delete"]
    assert contracts.wrap(message, correlation_id=TASK_ID, message_id="m-1").id == "m-1"
    first = contracts.wrap(message, correlation_id=TASK_ID).id
    second = contracts.wrap(message, correlation_id=TASK_ID).id
    assert first and second and first != second


def test_round_trip_without_actor_and_causation():
    envelope = contracts.wrap(SAMPLES["image.delete"], correlation_id=TASK_ID)
    decoded = contracts.decode(contracts.encode(envelope))
    assert decoded.actor is None
    assert decoded.causation_id is None


def test_reply_to_round_trips_and_is_left_out_of_the_wire_when_unset():
    envelope = contracts.wrap(SAMPLES["image.delete"], correlation_id=TASK_ID, reply_to="gateway.abc")
    assert contracts.decode(contracts.encode(envelope)).reply_to == "gateway.abc"
    plain = contracts.wrap(SAMPLES["image.delete"], correlation_id=TASK_ID)
    assert "reply_to" not in orjson.loads(contracts.encode(plain))
    assert contracts.decode(contracts.encode(plain)).reply_to is None


def test_unset_fields_are_omitted_from_the_payload():
    payload = UpdateImage(name="centos-7", alias="c7").to_payload()
    assert payload == {"name": "centos-7", "alias": "c7"}


def test_none_is_sent_and_kept_distinct_from_unset():
    message = ImportImage(name="centos-7", desc=None)
    assert message.to_payload() == {"name": "centos-7", "desc": None}
    parsed = contracts.parse(contracts.decode(contracts.encode(contracts.wrap(message, correlation_id=TASK_ID))))
    assert parsed.desc is None
    assert parsed.alias is UNSET


def test_encoded_envelope_has_the_documented_wire_shape():
    envelope = contracts.wrap(SAMPLES["image.delete"], correlation_id=TASK_ID, actor=Actor(user="u"))
    data = orjson.loads(contracts.encode(envelope))
    assert set(data) == {"id", "type", "schema_version", "time", "correlation_id", "causation_id", "actor", "payload"}
    assert data["actor"] == {"user": "u", "dc": None}
    assert data["payload"] == {"name": "centos-7"}
    assert data["time"].endswith("Z")


def test_payload_unknown_keys_are_ignored():
    message = DeleteImage.from_payload({"name": "centos-7", "from_the_future": 1})
    assert message == DeleteImage(name="centos-7")


# --- decode() refusals ----------------------------------------------------------------------------


def wire(**changes) -> dict:
    data = {
        "id": "msg-1", "type": "image.delete", "schema_version": 1, "time": "2024-01-01T00:00:00Z",
        "correlation_id": TASK_ID, "causation_id": None, "actor": {"user": "admin", "dc": "main"},
        "payload": {"name": "centos-7"},
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def poison(body) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as caught:
        contracts.decode(body)
    return caught.value


def test_decode_accepts_the_reference_wire_shape():
    envelope = contracts.decode(orjson.dumps(wire()))
    assert envelope == Envelope(id="msg-1", type="image.delete", correlation_id=TASK_ID, payload={"name": "centos-7"},
                                actor=Actor(user="admin", dc="main"), time="2024-01-01T00:00:00Z")


def test_decode_accepts_str_bodies():
    assert contracts.decode(orjson.dumps(wire()).decode()).id == "msg-1"


@pytest.mark.parametrize("version", [1, 2, 99])
def test_a_newer_schema_version_is_read_and_its_added_fields_are_ignored(version):
    """Versioning rule: a reader built for version 1 reads version N+1, which only adds optional
    fields (docs/messages.md, "Changing the contract")."""
    body = orjson.dumps({**wire(schema_version=version, type="image.update",
                                payload={"name": "centos-7", "desc": "d", "added_in_v2": {"x": 1}}),
                         "added_to_the_envelope": True})
    envelope = contracts.decode(body)
    assert envelope.schema_version == version
    assert contracts.parse(envelope) == UpdateImage(name="centos-7", desc="d")


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe"])
def test_decode_refuses_non_json(body):
    error = poison(body)
    assert error.message_id is None and error.correlation_id is None


@pytest.mark.parametrize("body", [b"[]", b"1", b'"x"', b"null"])
def test_decode_refuses_json_that_is_not_an_object(body):
    error = poison(body)
    assert error.message_id is None and error.correlation_id is None


@pytest.mark.parametrize(
    "changes, message_id, correlation_id",
    [
        ({"id": ...}, None, TASK_ID),
        ({"id": ""}, None, TASK_ID),
        ({"id": 5}, None, TASK_ID),
        ({"id": "x" * 129}, None, TASK_ID),  # too long to be recorded anywhere: not reported
        ({"type": "t" * 65}, "msg-1", TASK_ID),
        ({"id": "a\x00b"}, None, TASK_ID),
        ({"type": ...}, "msg-1", TASK_ID),
        ({"type": 3}, "msg-1", TASK_ID),
        ({"correlation_id": ...}, "msg-1", None),
        ({"correlation_id": ""}, "msg-1", None),
        ({"correlation_id": None}, "msg-1", None),
    ],
)
def test_decode_refuses_missing_or_bad_ids_and_keeps_the_readable_ones(changes, message_id, correlation_id):
    error = poison(orjson.dumps(wire(**changes)))
    assert error.message_id == message_id
    assert error.correlation_id == correlation_id


@pytest.mark.parametrize(
    "changes",
    [
        {"schema_version": 0},
        {"schema_version": -1},
        {"schema_version": 1.5},
        {"schema_version": "1"},
        {"schema_version": True},
        {"schema_version": None},
        {"schema_version": ...},
        {"payload": []},
        {"payload": "x"},
        {"payload": None},
        {"payload": ...},
        {"actor": "admin"},
        {"actor": {}},
        {"actor": {"user": ""}},
        {"actor": {"user": 5}},
        {"actor": {"user": "admin", "dc": 5}},
        {"causation_id": 5},
        {"time": ...},
        {"time": 12},
        {"reply_to": 5},
        {"reply_to": ""},
        {"reply_to": "x" * 201},
        {"reply_to": "gateway\x00"},
    ],
)
def test_decode_refuses_bad_envelope_fields_and_carries_the_ids(changes):
    error = poison(orjson.dumps(wire(**changes)))
    assert error.message_id == "msg-1"
    assert error.correlation_id == TASK_ID
    assert error.message_type == "image.delete"


# --- parse() refusals -----------------------------------------------------------------------------


def envelope_of(type_name: str, payload: dict) -> Envelope:
    return Envelope(id="msg-2", type=type_name, correlation_id=TASK_ID, payload=payload)


def parse_poison(envelope: Envelope) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as caught:
        contracts.parse(envelope)
    return caught.value


def test_parse_refuses_an_unknown_type_and_carries_the_ids():
    error = parse_poison(envelope_of("image.explode", {"name": "x"}))
    assert error.message_id == "msg-2"
    assert error.correlation_id == TASK_ID
    assert error.message_type == "image.explode"


@pytest.mark.parametrize(
    "type_name, payload",
    [
        ("image.import", {}),
        ("image.update", {"alias": "x"}),
        ("image.delete", {}),
        ("image.imported", {"image": IMAGE_STATE}),
        ("image.updated", {"image": IMAGE_STATE, "version": 2}),
        ("image.deleted", {"uuid": UUID, "version": 1}),
        ("task.started", {"task_id": TASK_ID, "command": "image.import"}),
        ("task.failed", {"task_id": TASK_ID, "command": "c", "object_name": "o", "http_code": 400, "result": None}),
    ],
)
def test_parse_refuses_a_payload_missing_a_required_field(type_name, payload):
    error = parse_poison(envelope_of(type_name, payload))
    assert error.message_id == "msg-2"
    assert error.correlation_id == TASK_ID
    assert error.message_type == type_name


@pytest.mark.parametrize(
    "type_name, payload",
    [
        ("image.delete", {"name": 5}),
        ("image.delete", {"name": None}),
        ("image.import", {"name": ["centos"]}),
        ("image.imported", {"image": [], "version": 1}),
        ("image.imported", {"image": IMAGE_STATE, "version": "1"}),
        ("image.imported", {"image": IMAGE_STATE, "version": True}),
        ("image.imported", {"image": IMAGE_STATE, "version": 1.5}),
        ("image.updated", {"image": IMAGE_STATE, "version": 2, "changed": "alias"}),
        ("image.deleted", {"uuid": UUID, "name": "x", "version": None}),
        ("task.started", {"task_id": 1, "command": "c", "object_name": "o"}),
        ("task.started", {"task_id": TASK_ID, "command": "c", "object_name": "o", "user": 5}),
        ("task.started", {"task_id": TASK_ID, "command": "c", "object_name": "o", "stream_version": "2"}),
        ("task.failed", {"task_id": TASK_ID, "command": "c", "object_name": "o", "http_code": "400",
                         "result": None, "code": "x"}),
        ("task.failed", {"task_id": TASK_ID, "command": "c", "object_name": "o", "http_code": True,
                         "result": None, "code": "x"}),
    ],
)
def test_parse_refuses_a_wrong_typed_strict_field(type_name, payload):
    error = parse_poison(envelope_of(type_name, payload))
    assert error.message_id == "msg-2"
    assert error.correlation_id == TASK_ID


def test_parse_refuses_a_boolean_for_an_optional_integer_field():
    # JSON true is not an integer, for "int | None" fields as for "int" ones.
    parse_poison(envelope_of("task.started", {"task_id": TASK_ID, "command": "c", "object_name": "o",
                                              "stream_version": True}))


def test_parse_accepts_null_for_optional_strict_fields():
    message = contracts.parse(envelope_of("task.started", {
        "task_id": TASK_ID, "command": "c", "object_name": "o", "user": None, "stream": None, "stream_version": None,
    }))
    assert message == TaskStarted(task_id=TASK_ID, command="c", object_name="o")


def test_parse_carries_client_values_of_loose_command_fields_unchanged():
    message = contracts.parse(envelope_of("image.update", {"name": "x", "access": "1", "resize": "True", "tags": 5}))
    assert message == UpdateImage(name="x", access="1", resize="True", tags=5)


def test_image_events_name_their_stream_position():
    assert SAMPLES["image.imported"].stream_position() == (f"image:{UUID}", 1)
    assert SAMPLES["image.updated"].stream_position() == (f"image:{UUID}", 2)
    assert SAMPLES["image.deleted"].stream_position() == (f"image:{UUID}", 3)
    assert SAMPLES["task.started"].stream_position() is None


def test_decode_refuses_a_message_over_its_size_limit_before_parsing_it():
    body = orjson.dumps(wire())
    assert contracts.decode(body, max_bytes=len(body)).id == "msg-1"
    with pytest.raises(PoisonMessage, match=f"message is larger than {len(body) - 1} bytes"):
        contracts.decode(body, max_bytes=len(body) - 1)
    with pytest.raises(PoisonMessage, match="larger than 1024 bytes"):
        contracts.decode(b"{" * 5000, max_bytes=1024)  # not even looked at
