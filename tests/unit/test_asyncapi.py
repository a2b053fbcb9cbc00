"""The message contract as data: the AsyncAPI document served at ``/api/asyncapi.json``, the JSON
Schemas generated from the payload classes, docs/asyncapi.md, and the guard against breaking
changes (``tests/unit/contract_snapshot.json``; the rules: docs/messages.md, "Changing the
contract")."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pika
import pytest
import referencing
from jsonschema import Draft7Validator, Draft202012Validator
from kombu import Connection
from referencing.jsonschema import DRAFT7
from starlette.testclient import TestClient

from imagesvc.services.gateway import asyncapi
from imagesvc.services.gateway.app import create_app
from imagesvc.shared import contracts
from imagesvc.shared.broker.topology import COMMAND_ROUTES, NODE_COMMAND_TYPES, build_topology, node_routing_key
from imagesvc.shared.config import Settings
from imagesvc.shared.contracts import MESSAGE_TYPES
from imagesvc.shared.contracts.base import UNSET, Message
from imagesvc.shared.contracts.routing import is_inventory, route
from imagesvc.shared.contracts.schema import breaking_changes, contract_shape, envelope_schema, message_schema
from imagesvc.shared.db.engine import make_engine
from imagesvc.shared.errors import PoisonMessage
from tests.support.contract_tap import Received, problem
from tests.unit.test_messages_doc import examples

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_SCHEMA = ROOT / "tests" / "support" / "asyncapi" / "asyncapi-3.0.0.json"
SNAPSHOT = Path(__file__).with_name("contract_snapshot.json")
REFRESH = "python -m imagesvc.shared.contracts.schema --snapshot > tests/unit/contract_snapshot.json"


@functools.cache
def asyncapi_validator() -> Draft7Validator:
    """The official schema, offline: every definition of the bundle is registered under its ``$id``
    (a reference to anything else fails instead of reaching for the network)."""
    spec = json.loads(ASYNCAPI_SCHEMA.read_text())
    registry = referencing.Registry().with_resources(
        (definition["$id"], DRAFT7.create_resource(definition)) for definition in spec["definitions"].values())
    return Draft7Validator(spec, registry=registry)


def test_the_document_is_valid_asyncapi_3():
    document = asyncapi.document()
    assert document["asyncapi"] == "3.0.0"
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
              for error in asyncapi_validator().iter_errors(document)]
    assert not errors, "\n".join(errors)


def test_the_official_schema_catches_a_bad_document():
    """The validator is wired up: a document that is not AsyncAPI fails."""
    document = json.loads(json.dumps(asyncapi.document()))
    document["operations"]["sendCommand"]["action"] = "publish"
    document["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] = "queue"
    assert len(list(asyncapi_validator().iter_errors(document))) == 2


def test_every_reference_resolves():
    document = asyncapi.document()

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for value in node.values() for r in refs(value)]
        return [r for value in node for r in refs(value)] if isinstance(node, list) else []

    found = refs(document)
    assert found
    for ref in found:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]


def test_every_message_type_is_on_exactly_one_channel_with_its_schema():
    document = asyncapi.document()
    on_channels = [name for channel in document["channels"].values() for name in channel["messages"]]
    assert sorted(on_channels) == sorted(MESSAGE_TYPES)
    components = document["components"]
    assert components["schemas"]["envelope"] == envelope_schema()
    for name, cls in MESSAGE_TYPES.items():
        assert components["schemas"][name] == message_schema(cls)
        message = components["messages"][name]
        assert message["payload"]["allOf"][1]["properties"]["payload"] == {"$ref": f"#/components/schemas/{name}"}
        assert message["headers"]["properties"]["type"]["const"] == name
        assert message["bindings"]["amqp"]["messageType"] == name


def test_channels_are_the_topologys_exchanges_and_routing_keys():
    """Each channel's address, filled in for each of its messages, is the routing key the code
    publishes that message with."""
    document, topology = asyncapi.document(), build_topology("")
    exchanges = {"commands": topology.commands, "nodeCommands": topology.commands, "events": topology.events,
                 "inventory": topology.inventory}
    bound = {t for types in COMMAND_ROUTES.values() for t in types}
    for channel_id, channel in document["channels"].items():
        exchange = exchanges[channel_id]
        assert channel["bindings"]["amqp"]["exchange"] == {"name": exchange.name, "type": exchange.type,
                                                          "durable": True, "autoDelete": False}
        assert set(channel["parameters"]) == set(channel["address"].replace("}", "{").split("{")[1::2])
        assert channel["parameters"]["type"]["enum"] == list(channel["messages"])
        for name in channel["messages"]:
            key = channel["address"].format(type=name, hostname="cn01.example.com", scope="dc.my%2Edc")
            if channel_id == "commands":
                assert key == name and name in bound
            elif channel_id == "nodeCommands":
                assert key == node_routing_key(name, "cn01.example.com") and name in NODE_COMMAND_TYPES
            else:
                payload = {"dc": "my.dc", "image": {"dc_bound": "my.dc"}, "dc_bound": "my.dc"}
                assert key == route(name, payload).key


def test_a_program_sends_commands_and_facts_and_receives_events():
    operations = asyncapi.document()["operations"]
    assert {op["channel"]["$ref"]: op["action"] for op in operations.values()} == {
        "#/channels/commands": "send", "#/channels/nodeCommands": "send", "#/channels/events": "receive",
        "#/channels/inventory": "send"}
    reply = operations["sendCommand"]["reply"]
    assert [ref["$ref"] for ref in reply["messages"]] == [
        "#/channels/events/messages/task.succeeded", "#/channels/events/messages/task.failed"]


@pytest.mark.parametrize("name", ["envelope", *sorted(MESSAGE_TYPES)])
def test_each_schema_is_a_valid_json_schema_in_both_dialects(name):
    schema = envelope_schema() if name == "envelope" else message_schema(MESSAGE_TYPES[name])
    Draft202012Validator.check_schema(schema)
    Draft7Validator.check_schema(schema)
    whole = envelope_schema(None if name == "envelope" else MESSAGE_TYPES[name])
    Draft202012Validator.check_schema(whole)
    assert not {"$ref", "$defs", "$schema", "definitions"} & _keys(whole)  # each schema stands alone


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_keys(value) for value in node.values()))
    return set().union(*(_keys(value) for value in node)) if isinstance(node, list) else set()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Annotated(Message):
    """Every annotation the generator knows."""

    TYPE: ClassVar[str] = "test.annotated"
    KIND: ClassVar[str] = "event"
    text: str
    number: int
    ratio: float = 0.5
    flag: bool = False
    anything: Any = UNSET
    maybe: int | None = None
    words: list[str] = dataclasses.field(default_factory=list)
    objects: list[dict[str, Any]] = UNSET
    mapping: dict[str, int] = UNSET
    either: str | int = UNSET


def test_annotations_become_json_types_and_defaults_make_fields_optional():
    schema = message_schema(Annotated)
    assert schema["required"] == ["text", "number"]
    assert schema["description"] == "Every annotation the generator knows."
    assert schema["additionalProperties"] is True
    assert schema["properties"] == {
        "text": {"type": "string"},
        "number": {"type": "integer"},
        "ratio": {"type": "number", "default": 0.5},
        "flag": {"type": "boolean", "default": False},
        "anything": {},
        "maybe": {"type": ["integer", "null"], "default": None},
        "words": {"type": "array", "items": {"type": "string"}},
        "objects": {"type": "array", "items": {"type": "object"}},
        "mapping": {"type": "object", "additionalProperties": {"type": "integer"}},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    }
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"text": "x", "number": 1, "added_later": True})
    assert not validator.is_valid({"text": "x", "number": True})  # JSON true is not an integer


def test_an_annotation_without_a_json_schema_is_refused():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Unmapped(Message):
        TYPE: ClassVar[str] = "test.unmapped"
        items: set[str]

    with pytest.raises(TypeError, match=r"Unmapped\.items"):
        message_schema(Unmapped)


def _other_json_value(value: Any) -> Any:
    """A value of another JSON type than ``value``'s."""
    return [value] if not isinstance(value, list) else {"was": value}


def test_the_schemas_and_the_reader_agree_on_the_documented_examples():
    """Mutations of each documented payload (a field given another JSON type, a field left out):
    the generated schema refuses exactly those the production reader refuses."""
    checked = 0
    for name, body in examples().items():
        cls = MESSAGE_TYPES[name]
        validator = Draft202012Validator(message_schema(cls))
        payload = orjson.loads(body)["payload"]
        mutations = [{**payload, field: _other_json_value(value)} for field, value in payload.items()]
        mutations += [{k: v for k, v in payload.items() if k != field} for field in payload]
        for mutated in mutations:
            try:
                cls.from_payload(mutated)
                parsed = True
            except PoisonMessage:
                parsed = False
            assert validator.is_valid(mutated) == parsed, (name, mutated)
            checked += 1
    assert checked > 150


@pytest.mark.parametrize("change", [
    {}, {"schema_version": 2}, {"schema_version": 0}, {"schema_version": "1"}, {"schema_version": True},
    {"schema_version": 1.5}, {"id": ""}, {"id": "x" * 129}, {"id": "a\x00b"}, {"type": "t" * 65}, {"type": 5},
    {"correlation_id": None}, {"time": 5}, {"causation_id": 5}, {"actor": None}, {"actor": "admin"},
    {"actor": {}}, {"actor": {"user": ""}}, {"actor": {"user": "u" * 151}}, {"actor": {"user": "a", "dc": "d" * 17}},
    {"actor": {"user": "a", "dc": None, "added": 1}}, {"reply_to": None}, {"reply_to": "r" * 201},
    {"reply_to": ""}, {"payload": []}, {"added_later": {"x": 1}},
])
def test_the_envelope_schema_accepts_nothing_the_reader_refuses(change):
    wire = {"id": "m-1", "type": "image.delete", "schema_version": 1, "time": "2026-11-27T10:00:00Z",
            "correlation_id": "t-1", "causation_id": None, "actor": {"user": "admin", "dc": "main"},
            "payload": {"name": "centos-7"}, **change}
    try:
        contracts.decode(orjson.dumps(wire))
        decodes = True
    except PoisonMessage:
        decodes = False
    assert Draft202012Validator(envelope_schema()).is_valid(wire) == decodes


def test_the_document_is_served_without_credentials():
    app = create_app(Settings(broker_url="memory://"), engine=make_engine("sqlite://"), publisher=None,
                     topology=build_topology("doc.", quorum=False), connect=lambda: Connection("memory://"))
    with TestClient(app) as client:
        served = client.get("/api/asyncapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("application/json")
        assert served.json() == asyncapi.document()
        # An open path: a wrong method is refused without asking who calls.
        refused = client.post("/api/asyncapi.json")
        assert (refused.status_code, refused.json()) == (405, {"detail": 'Method "POST" not allowed.'})


def test_docs_asyncapi_md_is_the_document_rendered():
    current = (ROOT / "docs" / "asyncapi.md").read_text()
    assert current == asyncapi.markdown(), f"docs/asyncapi.md is stale: regenerate it with `{asyncapi.REGENERATE}`"


def test_no_breaking_change_to_the_contract():
    recorded = json.loads(SNAPSHOT.read_text())
    current = contract_shape(MESSAGE_TYPES)
    problems = breaking_changes(recorded, current)
    assert not problems, (
        "breaking changes to the message contract (docs/messages.md, \"Changing the contract\": an incompatible "
        "change is a new message type, the old one kept):\n  " + "\n  ".join(problems))
    if current != recorded:
        warnings.warn(f"the message contract has additions that tests/unit/contract_snapshot.json does not record; "
                      f"if they are intended, refresh it: {REFRESH}", stacklevel=1)


def test_the_guard_lets_additions_pass_and_names_each_breaking_change():
    old = contract_shape(MESSAGE_TYPES)
    added = json.loads(json.dumps(old))
    added["image.delete"]["fields"]["reason"] = {"type": "string"}
    added["image.shred"] = {"required": ["name"], "fields": {"name": {"type": "string"}}}
    assert breaking_changes(old, added) == []

    broken = json.loads(json.dumps(old))
    del broken["vm.removed"]
    del broken["image.delete"]["fields"]["name"]
    broken["image.delete"]["required"].remove("name")
    broken["task.progress"]["fields"]["done"] = {"type": "string"}
    broken["image.update"]["fields"]["owner_id"] = {"type": "integer"}
    broken["image.update"]["required"].append("owner_id")
    broken["node.updated"]["required"].append("uuid")
    assert breaking_changes(old, broken) == [
        "image.delete: field 'name' was removed",
        "image.update: field 'owner_id' is required now (a new field must be optional)",
        "node.updated: field 'uuid' is required now (a new field must be optional)",
        "task.progress: field 'done' changed from {\"type\": \"integer\"} to {\"type\": \"string\"}",
        "vm.removed: the message type is gone (a type is never removed or renamed)",
    ]


# --- the contract tap's judgement (tests/support/contract_tap.py), without a broker ---------------

EXCHANGES = {"commands": "t.imagesvc.commands", "events": "t.imagesvc.events", "inventory": "t.imagesvc.inventory"}


def tapped(name: str, *, exchange: str | None = None, routing_key: str | None = None, envelope: dict | None = None,
           **properties: Any) -> Received:
    """The documented example of ``name`` as imagesvc would publish it."""
    envelope = envelope or orjson.loads(examples()[name])
    cls = MESSAGE_TYPES[name]
    channel = "commands" if cls.KIND == "command" else "inventory" if is_inventory(name) else "events"
    key = routing_key or (route(name, envelope["payload"]).key if channel == "events" else name)
    props = {"content_type": "application/json", "delivery_mode": 2, "message_id": envelope["id"],
             "correlation_id": envelope["correlation_id"], "type": name, "user_id": "guest", **properties}
    return Received(exchange or EXCHANGES[channel], key, pika.BasicProperties(**props), orjson.dumps(envelope))


def test_the_tap_passes_every_documented_message_as_imagesvc_publishes_it():
    assert {name: problem(tapped(name), EXCHANGES) for name in MESSAGE_TYPES} == {name: None for name in MESSAGE_TYPES}


def test_the_tap_names_what_breaks_the_contract():
    update = orjson.loads(examples()["image.update"])
    assert "payload/expected_version" in problem(
        tapped("image.update", envelope={**update, "payload": {**update["payload"], "expected_version": "4"}}),
        EXCHANGES)
    assert "payload: 'name' is a required property" in problem(
        tapped("image.update", envelope={**update, "payload": {"desc": "x"}}), EXCHANGES)
    assert "schema_version" in problem(tapped("image.update", envelope={**update, "schema_version": 0}), EXCHANGES)
    assert "delivery_mode" in problem(tapped("image.update", delivery_mode=1), EXCHANGES)
    assert "not the envelope's id" in problem(tapped("image.update", message_id="other"), EXCHANGES)
    assert "routing key" in problem(tapped("image.update", routing_key="image.delete"), EXCHANGES)
    assert "published to" in problem(tapped("node.updated", exchange=EXCHANGES["events"]), EXCHANGES)
    assert "routing key is not 'task.failed.dc.main'" in problem(
        tapped("task.failed", routing_key="task.failed.global"), EXCHANGES)
    assert problem(tapped("image.update", envelope={**update, "type": "image.frobnicate"}), EXCHANGES) == (
        "not an envelope of a message type of the contract")
