"""The message contract as an AsyncAPI 3.0.0 document, served at ``GET /api/asyncapi.json``.

Generated, never written by hand: the payload and envelope schemas come from the payload classes
(``shared.contracts.schema``), exchange names and kinds from the topology
(``shared.broker.topology``, without a deployment's ``IMAGESVC_TOPOLOGY_PREFIX``), which service
consumes which command from ``COMMAND_ROUTES``. Operations are seen from a program that uses the
contract: it *sends* commands and inventory facts (node and VM events) and *receives* imagesvc's
events. The internal task notifications and the dead-letter exchange are not part of it.

``python -m imagesvc.services.gateway.asyncapi`` prints the document; with ``--markdown`` it
prints docs/asyncapi.md, which ``tests/unit/test_asyncapi.py`` keeps in step with the document.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from imagesvc.shared.broker.topology import COMMAND_ROUTES, NODE_COMMAND_TYPES, build_topology
from imagesvc.shared.contracts import COMMAND_TYPES, EVENT_TYPES, MESSAGE_TYPES, SCHEMA_VERSION
from imagesvc.shared.contracts.base import Message
from imagesvc.shared.contracts.routing import is_inventory
from imagesvc.shared.contracts.schema import envelope_schema, message_schema

Json = dict[str, Any]

#: The AMQP bindings' version (AsyncAPI bindings repository) this document writes.
AMQP_BINDING = "0.3.0"
REGENERATE = "python -m imagesvc.services.gateway.asyncapi --markdown > docs/asyncapi.md"

_INFO = (
    "imagesvc's public message contract on RabbitMQ: programs may publish commands, subscribe to image and task "
    "events, and publish the node and VM facts imagesvc keeps. Every message is one JSON envelope (the `envelope` "
    "schema) whose `payload` has the fields of its type; readers ignore fields they do not know and accept any "
    "`schema_version` from 1 up, and an incompatible change is a new message type (docs/messages.md, \"Changing "
    "the contract\"). Exchange names are shown as in production; a deployment's `IMAGESVC_TOPOLOGY_PREFIX` is "
    "put before each of them."
)

# The channels: one per exchange and form of routing key.
_COMMANDS, _NODE_COMMANDS, _EVENTS, _INVENTORY = "commands", "nodeCommands", "events", "inventory"


@functools.cache
def document() -> Json:
    """The AsyncAPI 3.0.0 document of the message contract. Built once per process (the contract
    is code); callers must not modify it."""
    topology = build_topology("")
    groups = _channel_messages()
    channels = {
        _COMMANDS: _channel(
            "{type}", topology.commands, groups[_COMMANDS],
            "Commands for imagesvc's services; the routing key is the command type. Each is handled by exactly one "
            "consumer and ends in exactly one terminal task event (`task.succeeded` or `task.failed`) on `events`. "
            "The publisher's broker user (AMQP `user_id`, which RabbitMQ validates) must be the envelope's "
            "`actor.user` unless it is one of imagesvc's service users.",
            {"type": _type_parameter(groups[_COMMANDS], "The command type.")}),
        _NODE_COMMANDS: _channel(
            "{type}@{hostname}", topology.commands, groups[_NODE_COMMANDS],
            "Commands for the node agent of one compute node, on the commands exchange with the routing key "
            "`<type>@<hostname>`: they wait in that node's queue (`node.<hostname>.commands`) while its agent is "
            "down. A node whose agent never ran has no queue, and the publish is unroutable.",
            {"type": _type_parameter(groups[_NODE_COMMANDS], "The command type."),
             "hostname": {"description": "The compute node's hostname (letters, digits and `. _ -`).",
                          "examples": ["cn01.prague.example.com"]}}),
        _EVENTS: _channel(
            "{type}.{scope}", topology.events, groups[_EVENTS],
            "imagesvc's own events, written by its service users only (check the AMQP `user_id` before believing "
            "one). Bind a queue of your own (a server-named, exclusive one is simplest) with patterns such as "
            "`#`, `image.#`, `task.#`, `#.dc.prague`, `#.global`. An image event that moves an image out of a "
            "scope is also copied to the old scope's key (AMQP `CC` header). Delivery is at least once: "
            "deduplicate by envelope `id`; image events carry a stream version per image.",
            {"type": _type_parameter(groups[_EVENTS], "The event type."),
             "scope": {"description": "`dc.<datacenter>` for an event that belongs to a datacenter (an image bound "
                                      "to it, a task placed in it), else `global`. The datacenter name is written "
                                      "as one topic word: each character other than `A-Z a-z 0-9 _ -` as `%XX`, "
                                      "its UTF-8 bytes in upper-case hex (`my.dc` is `dc.my%2Edc`).",
                       "examples": ["global", "dc.prague", "dc.my%2Edc"]}}),
        _INVENTORY: _channel(
            "{type}", topology.inventory, groups[_INVENTORY],
            "Other systems' facts about compute nodes and VMs, routing key = event type. imagesvc believes one only "
            "from the broker users configured for its family (`IMAGESVC_NODE_PUBLISHERS`, "
            "`IMAGESVC_VM_PUBLISHERS`) and its service users; for each key (a hostname, a VM, a snapshot) the "
            "newest `changed_at` wins, whatever the delivery order.",
            {"type": _type_parameter(groups[_INVENTORY], "The event type.")}),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "imagesvc messages", "version": f"{SCHEMA_VERSION}.0.0", "description": _INFO},
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {
            "host": "{host}",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "imagesvc's RabbitMQ (the broker of `IMAGESVC_BROKER_URL`), on imagesvc's virtual host.",
            "variables": {"host": {"default": "localhost:5672", "description": "The broker's host and port."}},
            "security": [{"$ref": "#/components/securitySchemes/brokerUser"}],
        }},
        "channels": channels,
        "operations": _operations(groups),
        "components": {
            "schemas": {"envelope": envelope_schema(),
                        **{name: message_schema(cls) for name, cls in sorted(MESSAGE_TYPES.items())}},
            "messages": {name: _message(cls) for name, cls in sorted(MESSAGE_TYPES.items())},
            "securitySchemes": {"brokerUser": {
                "type": "userPassword",
                "description": "A RabbitMQ user of your own (docs/security.md, \"The broker setup\"). RabbitMQ "
                               "refuses a message whose AMQP `user_id` is not the publishing connection's user, "
                               "which is how imagesvc knows who published: set it on everything you publish.",
            }},
        },
    }


def _channel_messages() -> dict[str, list[str]]:
    """The message types each channel carries, in the registry's order."""
    groups: dict[str, list[str]] = {_COMMANDS: [], _NODE_COMMANDS: [], _EVENTS: [], _INVENTORY: []}
    for name in COMMAND_TYPES:
        groups[_NODE_COMMANDS if name in NODE_COMMAND_TYPES else _COMMANDS].append(name)
    for name in EVENT_TYPES:
        groups[_INVENTORY if is_inventory(name) else _EVENTS].append(name)
    return groups


def _type_parameter(types: list[str], description: str) -> Json:
    # ``location`` says where a program finds the value: the routing key's type is the envelope's.
    return {"description": description, "enum": types, "location": "$message.payload#/type"}


def _channel(address: str, exchange: Any, types: list[str], description: str, parameters: Json) -> Json:
    """``exchange``: the topology's exchange (its name, type, durability)."""
    return {
        "address": address,
        "description": description,
        "parameters": parameters,
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in types},
        "bindings": {"amqp": {
            "is": "routingKey",
            "exchange": {"name": exchange.name, "type": exchange.type, "durable": bool(exchange.durable),
                         "autoDelete": bool(exchange.auto_delete)},
            "bindingVersion": AMQP_BINDING,
        }},
    }


def _operations(groups: dict[str, list[str]]) -> Json:
    send = {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING}}
    receive = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}}
    terminal = [{"$ref": f"#/channels/{_EVENTS}/messages/{name}"} for name in ("task.succeeded", "task.failed")]

    def operation(action: str, channel: str, summary: str, bindings: Json, **more: Any) -> Json:
        return {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, "summary": summary,
                "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in groups[channel]],
                "bindings": bindings, **more}

    publish = ("Publish persistent (delivery mode 2), with publisher confirms and `mandatory`, with your broker "
               "user as `user_id`.")
    return {
        "sendCommand": operation(
            "send", _COMMANDS, "Ask imagesvc to change images or refresh repositories.", send,
            description=publish + " A new task id of your own (a UUID will do) is the `correlation_id`; the "
                                  "task's outcome is its terminal task event.",
            reply={"channel": {"$ref": f"#/channels/{_EVENTS}"}, "messages": terminal}),
        "sendNodeCommand": operation(
            "send", _NODE_COMMANDS, "Ask the node agent of a compute node to make an image from a VM snapshot.",
            send, description=publish, reply={"channel": {"$ref": f"#/channels/{_EVENTS}"}, "messages": terminal}),
        "receiveEvent": operation(
            "receive", _EVENTS, "Follow images and tasks.", receive,
            description="Consume from a queue of your own bound to the events exchange; believe an event only if "
                        "its `user_id` is one of imagesvc's service users."),
        "sendInventoryFact": operation(
            "send", _INVENTORY, "Tell imagesvc about compute nodes, VMs and VM snapshots.", send,
            description=publish + " `correlation_id` is your own id for the change (the message id will do); "
                                  "`causation_id` and `actor` are null."),
    }


def _message(cls: type[Message]) -> Json:
    name = cls.TYPE
    description = " ".join(f"{message_schema(cls).get('description', '')} {_handled_by(name)}".split())
    message: Json = {
        "name": name,
        "title": cls.__name__,
        "contentType": "application/json",
        "tags": [{"name": cls.KIND}],
        "headers": _amqp_properties(name),
        "payload": {"allOf": [
            {"$ref": "#/components/schemas/envelope"},
            {"type": "object", "properties": {"type": {"const": name},
                                              "payload": {"$ref": f"#/components/schemas/{name}"}}},
        ]},
        "correlationId": {"description": "The task id (for inventory facts: the publisher's own id).",
                          "location": "$message.header#/correlation_id"},
        "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING}},
    }
    if description:
        message["description"] = description
    return message


def _handled_by(name: str) -> str:
    if name in NODE_COMMAND_TYPES:
        return "Handled by the node agent of the node that runs the VM."
    for service, types in COMMAND_ROUTES.items():
        if name in types:
            return f"Handled by the {service} (queue `{service}.commands`)."
    return ""


def _amqp_properties(name: str) -> Json:
    """The AMQP basic properties every message carries (``headers`` here means them, not the
    AMQP application headers, except ``headers.CC``)."""
    properties: Json = {
        "content_type": {"type": "string", "const": "application/json"},
        "delivery_mode": {"type": "integer", "const": 2, "description": "Persistent."},
        "message_id": {"type": "string", "description": "The envelope's `id`."},
        "correlation_id": {"type": "string", "description": "The envelope's `correlation_id`."},
        "type": {"type": "string", "const": name, "description": "The envelope's `type`."},
        "user_id": {"type": "string", "description": "The publisher's broker user, validated by RabbitMQ."},
    }
    if name in EVENT_TYPES and not is_inventory(name):
        properties["headers"] = {"type": "object", "properties": {"CC": {
            "type": "array", "items": {"type": "string"},
            "description": "The other routing keys the event was copied to (an image that left a scope)."}}}
    return {"type": "object", "required": sorted(set(properties) - {"headers"}), "properties": properties,
            "additionalProperties": True}


# --- docs/asyncapi.md ---------------------------------------------------------------------------


def markdown(doc: Json | None = None) -> str:
    """docs/asyncapi.md: the document rendered for reading (channels, operations, the envelope,
    the AMQP properties, each message's payload fields)."""
    doc = doc or document()
    schemas, messages = doc["components"]["schemas"], doc["components"]["messages"]
    lines = [
        "# Messages: the AsyncAPI description",
        "",
        f"<!-- Generated from the contract classes by `{REGENERATE}`; do not edit. -->",
        "",
        f"The message contract as data: `GET /api/asyncapi.json` serves it as an AsyncAPI {doc['asyncapi']} "
        f"document (contract version {doc['info']['version']}), generated from the payload classes, as are the "
        "JSON Schemas in it (one per message's payload, and the envelope's). This page is that document rendered; "
        "[messages.md](messages.md) is the catalogue with examples and the rules behind each message.",
        "",
        doc["info"]["description"],
        "",
        "## Channels",
        "",
        "| channel | exchange | routing key | messages |",
        "|---|---|---|---|",
    ]
    for channel_id, channel in doc["channels"].items():
        exchange = channel["bindings"]["amqp"]["exchange"]
        kind = f"{exchange['type']}{', durable' if exchange['durable'] else ''}"
        lines.append(f"| `{channel_id}` | `{exchange['name']}` ({kind}) | `{channel['address']}` | "
                     f"{', '.join(f'`{name}`' for name in channel['messages'])} |")
    for channel_id, channel in doc["channels"].items():
        lines += ["", f"### Channel `{channel_id}`", "", channel["description"], ""]
        lines += ["| parameter | values |", "|---|---|"]
        for name, parameter in channel["parameters"].items():
            values = parameter.get("enum") or parameter.get("examples") or []
            where = " It is the envelope's `type`." if parameter.get("location") == "$message.payload#/type" else ""
            lines.append(f"| `{{{name}}}` | {parameter['description']}{where} "
                         f"{'One of' if 'enum' in parameter else 'For example'}: "
                         f"{', '.join(f'`{value}`' for value in values)} |")
    lines += ["", "## Operations", "", "Seen from a program that uses the contract.", "",
              "| operation | action | channel | messages | what |", "|---|---|---|---|---|"]
    for operation_id, operation in doc["operations"].items():
        channel_id = operation["channel"]["$ref"].rsplit("/", 1)[1]
        reply = operation.get("reply")
        outcome = (" Reply: " + ", ".join(f"`{ref['$ref'].rsplit('/', 1)[1]}`" for ref in reply["messages"])
                   + f" on `{reply['channel']['$ref'].rsplit('/', 1)[1]}`.") if reply else ""
        lines.append(f"| `{operation_id}` | {operation['action']} | `{channel_id}` | "
                     f"{len(operation['messages'])} | {operation['summary']} {operation.get('description', '')}"
                     f"{outcome} |")
    lines += ["", "## The envelope", "", schemas["envelope"]["description"], "", *_field_table(schemas["envelope"]),
              "", "## AMQP properties", "",
              "Every message carries these AMQP basic properties (`type` is the message's type):", ""]
    properties = messages[next(iter(messages))]["headers"]
    lines += _field_table({**properties, "properties": {
        **properties["properties"], "type": {"type": "string", "description": "The envelope's `type`."}}})
    lines += ["", "Events on `events` may also carry the AMQP header `CC`: the other routing keys the event was "
              "copied to (an image that left a scope).", "", "## Messages"]
    for channel_id, channel in doc["channels"].items():
        for name in channel["messages"]:
            message = messages[name]
            lines += ["", f"### `{name}`", "",
                      f"{message['tags'][0]['name'].capitalize()} on `{channel_id}`. {message.get('description', '')}"
                      .rstrip(), "", *_field_table(schemas[name])]
    return "\n".join(lines) + "\n"


def _field_table(schema: Json) -> list[str]:
    """A table of an object schema's properties; a default or meaning column only when some have one."""
    fields = schema["properties"]
    required = set(schema.get("required", ()))
    defaults = any("default" in field for field in fields.values())
    meanings = any(field.get("description") for field in fields.values())
    header = ["field", "type", "required", *(["default"] if defaults else []), *(["meaning"] if meanings else [])]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, field, is_required in _rows(fields, required):
        cells = [f"`{name}`", _type_text(field), "yes" if is_required else "no"]
        if defaults:
            cells.append(f"`{json.dumps(field['default'])}`" if "default" in field else "")
        if meanings:
            cells.append(field.get("description", ""))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _rows(fields: Json, required: set[str], prefix: str = "") -> list[tuple[str, Json, bool]]:
    """(dotted name, schema, required) of each field, an object field's own fields after it."""
    rows = []
    for name, field in fields.items():
        rows.append((prefix + name, field, name in required))
        if "properties" in field:
            rows += _rows(field["properties"], set(field.get("required", ())), f"{prefix}{name}.")
    return rows


def _type_text(schema: Json) -> str:
    """A schema as a few words: ``string (1-128 characters)``, ``integer or null``, ``array of string``."""
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "anyOf" in schema:
        return " or ".join(_type_text(member) for member in schema["anyOf"])
    kinds = schema.get("type")
    if kinds is None:
        return "any JSON value"
    words = []
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind == "array" and schema.get("items"):
            kind = f"array of {_type_text(schema['items'])}"
        words.append(kind)
    text = " or ".join(words)
    limits = []
    if "minLength" in schema or "maxLength" in schema:
        limits.append(f"{schema.get('minLength', 0)}-{schema['maxLength']} characters" if "maxLength" in schema
                      else f"at least {schema['minLength']} characters")
    if "minimum" in schema:
        limits.append(f"at least {schema['minimum']}")
    if "format" in schema:
        limits.append(schema["format"])
    return f"{text} ({', '.join(limits)})" if limits else text


def main(argv: list[str]) -> int:
    """Print the document as JSON, or with ``--markdown`` as docs/asyncapi.md."""
    if argv not in ([], ["--markdown"]):
        print("usage: python -m imagesvc.services.gateway.asyncapi [--markdown]", file=sys.stderr)
        return 2
    sys.stdout.write(markdown() if argv else json.dumps(document(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
