"""docs/messages.md is the message catalogue: each registered type has a section with a JSON
example, and each example is a valid envelope of its type for the production codec and for the
JSON Schema generated from its payload class."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from imagesvc.shared import contracts

DOC = Path(__file__).resolve().parents[2] / "docs" / "messages.md"


def examples() -> dict[str, bytes]:
    text = DOC.read_text()
    found = {}
    for match in re.finditer(r"^### `([a-z.]+)`\n(.*?)```json\n(.*?)```", text, re.S | re.M):
        found[match.group(1)] = match.group(3).encode()
    return found


def test_every_message_type_is_documented_with_an_example():
    assert set(examples()) == set(contracts.MESSAGE_TYPES)


def test_every_example_decodes_as_its_type():
    for message_type, body in examples().items():
        envelope = contracts.decode(body)
        assert envelope.type == message_type
        message = contracts.parse(envelope)
        assert message.TYPE == message_type
        # Nothing in the example is lost on the way through the codec.
        assert orjson.loads(contracts.encode(envelope))["payload"] == orjson.loads(body)["payload"]


def test_every_example_is_valid_for_its_generated_json_schema():
    from jsonschema import Draft202012Validator

    from imagesvc.shared.contracts.schema import envelope_schema

    for message_type, body in examples().items():
        validator = Draft202012Validator(envelope_schema(contracts.MESSAGE_TYPES[message_type]))
        errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                  for error in validator.iter_errors(orjson.loads(body))]
        assert not errors, f"the example of {message_type} does not match its schema: {errors}"


def test_documented_queues_match_the_topology():
    from imagesvc.shared.broker.topology import build_topology

    text = DOC.read_text()
    topology = build_topology("")
    for queue in [*topology.command_queues.values(), topology.projector_queue]:
        assert f"`{queue.name}`" in text
    for exchange in (topology.commands, topology.events, topology.inventory, topology.dlx, topology.notifications):
        assert f"`{exchange.name}`" in text
