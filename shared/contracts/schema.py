"""JSON Schemas of the message contract, generated from the payload classes: one source of truth.

``message_schema(cls)`` describes a command's or an event's ``payload``; ``envelope_schema()``
the envelope every message travels in (``envelope_schema(cls)``: a whole message of that type).
The AsyncAPI document (``services/gateway/asyncapi.py``), the message catalogue's checks and the
end-to-end tests' contract tap all read them from here; nothing keeps a copy of the fields.

A payload field's schema follows from its dataclass field:

- no default: required; a default (``UNSET`` or a value) makes it optional, and a JSON default
  other than ``UNSET`` is given as ``default``;
- its JSON type comes from its annotation: ``str`` string, ``int`` integer (JSON ``true`` is not
  one), ``float`` number, ``bool`` boolean, ``dict[str, X]`` object, ``list[X]`` array of X,
  ``X | None`` X or null, ``Any`` any JSON value (the consumer validates it with the HTTP API's
  rules and messages);
- objects allow properties they do not name: readers ignore fields they do not know, which is
  what lets a writer add optional fields without a new message type.

The schemas use only keywords that mean the same in JSON Schema draft-07 (AsyncAPI 3.0's default
Schema Object) and draft 2020-12, and carry no ``$schema``, ``$ref`` or ``$defs``: each one stands
alone, valid under either dialect.

``contract_shape()`` is what may not change incompatibly (required fields, field types, per
message type); ``breaking_changes(old, new)`` names the incompatible differences ("Changing the
contract" in docs/messages.md). ``python -m imagesvc.shared.contracts.schema --snapshot`` prints
the shape that ``tests/unit/contract_snapshot.json`` records.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from typing import Any, Union

from imagesvc.shared.contracts.base import UNSET, Message
from imagesvc.shared.contracts.envelope import REPLY_TO_MAX, SCHEMA_VERSION

Schema = dict[str, Any]

_PRIMITIVES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
#: Keywords that describe rather than constrain; left out of ``contract_shape``.
_DESCRIPTIVE = frozenset({"title", "description", "default", "examples", "format"})
#: A docstring's sentence about the class's exceptions: not part of the wire contract.
_RAISES = re.compile(r"\s*Raises\s+\w+[^.]*\.")
#: Strings the envelope's reader stores and logs: it refuses NUL characters in them.
_NO_NUL = "^[^\\u0000]*$"


def message_schema(cls: type[Message]) -> Schema:
    """The JSON Schema of the ``payload`` of a message of payload class ``cls``.

    Raises TypeError for a field whose annotation has no JSON Schema here (add the mapping to
    ``_annotation_schema`` rather than weakening the field to ``Any``)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        try:
            schema = _annotation_schema(hints[field.name])
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{field.name}: {exc}") from None
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
        elif field.default is not dataclasses.MISSING and field.default is not UNSET:
            schema = {**schema, "default": field.default}
        properties[field.name] = schema
    result: Schema = {"title": cls.TYPE, "type": "object"}
    description = _docstring(cls)
    if description:
        result["description"] = description
    result.update({"required": required, "properties": properties, "additionalProperties": True})
    return result


def envelope_schema(cls: type[Message] | None = None) -> Schema:
    """The JSON Schema of the envelope (``shared/contracts/envelope.py``); with ``cls``, of a whole
    message of that type (``type`` fixed, ``payload`` as ``message_schema(cls)``).

    It accepts nothing the envelope's reader (``decode``) refuses. It is stricter in one way:
    ``causation_id`` and ``actor`` are required (null when there is none), as every writer sends
    them, although the reader takes an absent one as null."""
    return {
        "title": cls.TYPE if cls else "envelope",
        "description": "The envelope every command and event travels in: one UTF-8 JSON object.",
        "type": "object",
        "required": ["id", "type", "schema_version", "time", "correlation_id", "causation_id", "actor", "payload"],
        "properties": {
            "id": _text(128, "The message id, also the AMQP message_id. Consumers deduplicate by it."),
            "type": ({"type": "string", "const": cls.TYPE, "description": "The message type, also the AMQP type."}
                     if cls else _text(64, "The message type (image.import, image.imported, ...), also the AMQP "
                                           "type.")),
            "schema_version": {
                "type": "integer", "minimum": 1, "default": SCHEMA_VERSION,
                "description": f"{SCHEMA_VERSION} today. A reader accepts any version from 1 up and ignores the fields "
                               "it does not know: a newer version only adds optional fields.",
            },
            "time": {"type": "string", "format": "date-time", "description": "When the message was created (UTC)."},
            "correlation_id": _text(128, "The task id, also the AMQP correlation_id."),
            "causation_id": {"type": ["string", "null"],
                             "description": "The id of the message whose handling produced this one."},
            "actor": {
                "type": ["object", "null"],
                "description": "Who asked, in which datacenter (null for other systems' facts).",
                "required": ["user"],
                "properties": {
                    "user": {"type": "string", "minLength": 1, "maxLength": 150, "pattern": _NO_NUL},
                    "dc": {"type": ["string", "null"], "maxLength": 16, "pattern": _NO_NUL},
                },
                "additionalProperties": True,
            },
            "reply_to": {
                "type": ["string", "null"], "minLength": 1, "maxLength": REPLY_TO_MAX, "pattern": _NO_NUL,
                "description": "Where a gateway listens for the task's notifications; leave it out when publishing "
                               "yourself.",
            },
            "payload": message_schema(cls) if cls else {"type": "object",
                                                         "description": "The typed fields of the command or event."},
        },
        "additionalProperties": True,
    }


def contract_shape(messages: dict[str, type[Message]]) -> dict[str, Any]:
    """What the compatibility rules protect, per message type and for the envelope: the required
    fields and each field's schema without its descriptive keywords. JSON-serialisable."""
    shape = {"envelope": _shape(envelope_schema())}
    shape.update((name, _shape(message_schema(cls))) for name, cls in sorted(messages.items()))
    return shape


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The changes from contract shape ``old`` to ``new`` that a reader or writer built for
    ``old`` would not survive: a message type gone, a field removed or retyped, a field that
    became required (a new one included). New types and new optional fields are not listed."""
    problems: list[str] = []
    for name, before in old.items():
        after = new.get(name)
        if after is None:
            problems.append(f"{name}: the message type is gone (a type is never removed or renamed)")
            continue
        for field, schema in before["fields"].items():
            if field not in after["fields"]:
                problems.append(f"{name}: field {field!r} was removed")
            elif after["fields"][field] != schema:
                problems.append(f"{name}: field {field!r} changed from {json.dumps(schema)} to "
                                f"{json.dumps(after['fields'][field])}")
        for field in sorted(set(after["required"]) - set(before["required"])):
            problems.append(f"{name}: field {field!r} is required now (a new field must be optional)")
    return problems


def _shape(schema: Schema) -> dict[str, Any]:
    return {"required": sorted(schema["required"]),
            "fields": {name: _strip(field) for name, field in sorted(schema["properties"].items())}}


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in sorted(schema.items()) if k not in _DESCRIPTIVE}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def _annotation_schema(hint: Any) -> Schema:
    """The JSON Schema of a value annotated ``hint`` (see the module docstring)."""
    if hint is Any:
        return {}
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and len(members) < len(args):
            return _nullable(_annotation_schema(members[0]))
        schemas = [_annotation_schema(a) for a in members] + ([{"type": "null"}] if len(members) < len(args) else [])
        return {"anyOf": schemas}
    if origin is list:
        items = _annotation_schema(args[0]) if args else {}
        return {"type": "array", **({"items": items} if items else {})}
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"JSON object keys are strings, not {args[0]!r}")
        values = _annotation_schema(args[1]) if args else {}
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    raise TypeError(f"no JSON Schema for the annotation {hint!r}")


def _nullable(schema: Schema) -> Schema:
    """``schema`` or null. A schema of one ``type`` takes ``null`` into it (its other keywords
    apply to that type only, so null stays valid); anything else becomes an ``anyOf``."""
    if not schema:
        return schema  # any JSON value already includes null
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _text(max_length: int, description: str) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": _NO_NUL,
            "description": description}


def _docstring(cls: type) -> str | None:
    """The class's own docstring without its sentences about Python (``Raises ...``), or None (a
    dataclass without a docstring gets its signature as ``__doc__``)."""
    doc = cls.__dict__.get("__doc__")
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return _RAISES.sub("", inspect.cleandoc(doc)).strip() or None


def main(argv: list[str]) -> int:
    """``--snapshot``: print the contract's shape as JSON (for tests/unit/contract_snapshot.json)."""
    from imagesvc.shared.contracts import MESSAGE_TYPES

    if argv != ["--snapshot"]:
        print("usage: python -m imagesvc.shared.contracts.schema --snapshot > tests/unit/contract_snapshot.json",
              file=sys.stderr)
        return 2
    print(json.dumps(contract_shape(MESSAGE_TYPES), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
