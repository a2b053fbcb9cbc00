"""The one JSON envelope every command and event travels in, and its codec.

Wire format (UTF-8 JSON object)::

    {"id": "<uuid>", "type": "image.update", "schema_version": 1, "time": "<ISO-8601 UTC>",
     "correlation_id": "<task id>", "causation_id": "<id of the message that caused this>" | null,
     "actor": {"user": "<username>", "dc": "<datacenter>" | null} | null,
     "reply_to": "<notification address>",                 (optional)
     "payload": {...}}

``reply_to`` names where the submitter of a command listens for its task's notifications (a
gateway sets it); the events a command causes carry it on, so the projector can tell exactly that
listener when the read model has caught up.

``decode`` accepts exactly this shape and raises ``PoisonMessage`` (with whatever ids it could
read) for anything else, so a bad delivery can still be answered with a terminal event. Unknown
fields are ignored, and so is a ``schema_version`` higher than ours (``readable_version``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from imagesvc.shared.errors import PoisonMessage

#: The envelope/payload version this code writes.
SCHEMA_VERSION = 1
#: Longest ``reply_to`` accepted (an AMQP routing key is at most 255 bytes).
REPLY_TO_MAX = 200


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who asked for a command: a username and the datacenter the request was made in."""

    user: str
    dc: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "dc": self.dc}


@dataclass(frozen=True, kw_only=True)
class Envelope:
    id: str
    type: str
    correlation_id: str
    payload: dict[str, Any]
    causation_id: str | None = None
    actor: Actor | None = None
    reply_to: str | None = None
    schema_version: int = SCHEMA_VERSION
    time: str = field(default_factory=lambda: utc_now_iso())

    def to_dict(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "type": self.type,
            "schema_version": self.schema_version,
            "time": self.time,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "actor": self.actor.to_dict() if self.actor else None,
            "payload": self.payload,
        }
        if self.reply_to is not None:
            data["reply_to"] = self.reply_to
        return data


def new_message_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.to_dict())


def decode(body: bytes | str, *, max_bytes: int | None = None) -> Envelope:
    """Parse and check an envelope. Raises PoisonMessage when it is not one we can read, or when
    it is longer than ``max_bytes`` (checked before anything is parsed)."""
    if max_bytes is not None and len(body) > max_bytes:
        raise PoisonMessage(f"message is larger than {max_bytes} bytes ({len(body)})")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonMessage("body is not a JSON object")
    ids = {
        "message_id": _str_or_none(data.get("id")),
        "correlation_id": _str_or_none(data.get("correlation_id")),
        "message_type": _str_or_none(data.get("type"), 64),
    }
    for key, limit in (("id", 128), ("type", 64), ("correlation_id", 128)):
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
            raise PoisonMessage(f"envelope field {key!r} must be a non-empty string of at most {limit} characters",
                                **ids)
    version = data.get("schema_version")
    if not readable_version(version):
        raise PoisonMessage(f"unsupported schema_version {version!r} (an integer of at least 1 is required)", **ids)
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise PoisonMessage("envelope field 'payload' must be an object", **ids)
    causation = data.get("causation_id")
    if causation is not None and not isinstance(causation, str):
        raise PoisonMessage("envelope field 'causation_id' must be a string or null", **ids)
    actor = _decode_actor(data.get("actor"), ids)
    reply_to = data.get("reply_to")
    if reply_to is not None and (not isinstance(reply_to, str) or not 0 < len(reply_to) <= REPLY_TO_MAX
                                 or "\x00" in reply_to):
        raise PoisonMessage(f"envelope field 'reply_to' must be null or a string of at most {REPLY_TO_MAX} "
                            "characters", **ids)
    time = data.get("time")
    if not isinstance(time, str):
        raise PoisonMessage("envelope field 'time' must be an ISO-8601 string", **ids)
    return Envelope(
        id=data["id"],
        type=data["type"],
        schema_version=version,
        time=time,
        correlation_id=data["correlation_id"],
        causation_id=causation,
        actor=actor,
        reply_to=reply_to,
        payload=payload,
    )


def readable_version(version: object) -> bool:
    """Whether a reader built for ``SCHEMA_VERSION`` reads a message of ``version``: any integer
    from 1 up. A higher version than ours differs only by additions (new optional fields), which
    ``Message.from_payload`` ignores; anything incompatible is a new message type, never a new
    version of an old one ("Changing the contract" in docs/messages.md). So a reader never refuses
    a newer writer, and readers need not be upgraded before writers."""
    return isinstance(version, int) and not isinstance(version, bool) and version >= 1


def _decode_actor(raw: object, ids: dict) -> Actor | None:
    if raw is None:
        return None
    user = raw.get("user") if isinstance(raw, dict) else None
    if not isinstance(user, str) or not 0 < len(user) <= 150 or "\x00" in user:
        raise PoisonMessage("envelope field 'actor' must be {\"user\": <name of at most 150 characters>, "
                            "\"dc\": <name>|null}", **ids)
    dc = raw.get("dc")
    if dc is not None and (not isinstance(dc, str) or len(dc) > 16 or "\x00" in dc):
        raise PoisonMessage("envelope field 'actor.dc' must be null or a datacenter name of at most 16 characters",
                            **ids)
    return Actor(user=user, dc=dc)


def _str_or_none(value: object, limit: int = 128) -> str | None:
    """A readable id for reporting, or None (too long or unstorable ids are not reported)."""
    return value if isinstance(value, str) and 0 < len(value) <= limit and "\x00" not in value else None
