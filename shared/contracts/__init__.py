"""The public message contract: envelope, commands, events and their registry.

Adding a message type means one dataclass and one line in ``MESSAGE_TYPES`` below; the
round-trip tests and ``docs/messages.md`` checks pick it up from here.
"""

from __future__ import annotations

from imagesvc.shared.contracts.base import UNSET, Message
from imagesvc.shared.contracts.commands import (
    AttachImage,
    Command,
    CreateImageFromSnapshot,
    DeleteImage,
    DetachImage,
    ImportImage,
    RefreshImageRepositories,
    UpdateImage,
)
from imagesvc.shared.contracts.envelope import SCHEMA_VERSION, Actor, Envelope, decode, encode, new_message_id
from imagesvc.shared.contracts.events import (
    TERMINAL_TASK_EVENTS,
    Event,
    ImageDeleted,
    ImageImported,
    ImageUpdated,
    NodeRemoved,
    NodeUpdated,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
    VmRemoved,
    VmSnapshotRemoved,
    VmSnapshotUpdated,
    VmUpdated,
    image_stream,
)
from imagesvc.shared.errors import PoisonMessage

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        ImportImage,
        UpdateImage,
        DeleteImage,
        AttachImage,
        DetachImage,
        RefreshImageRepositories,
        CreateImageFromSnapshot,
        ImageImported,
        ImageUpdated,
        ImageDeleted,
        TaskStarted,
        TaskProgress,
        TaskSucceeded,
        TaskFailed,
        NodeUpdated,
        NodeRemoved,
        VmUpdated,
        VmRemoved,
        VmSnapshotUpdated,
        VmSnapshotRemoved,
    )
}

COMMAND_TYPES = {t: c for t, c in MESSAGE_TYPES.items() if issubclass(c, Command)}
EVENT_TYPES = {t: c for t, c in MESSAGE_TYPES.items() if issubclass(c, Event)}


def parse(envelope: Envelope) -> Message:
    """The typed payload of an envelope. Raises PoisonMessage for unknown types or bad payloads."""
    cls = MESSAGE_TYPES.get(envelope.type)
    if cls is None:
        raise PoisonMessage(
            f"unknown message type {envelope.type!r}",
            message_id=envelope.id,
            correlation_id=envelope.correlation_id,
            message_type=envelope.type,
        )
    try:
        return cls.from_payload(envelope.payload)
    except PoisonMessage as exc:
        exc.message_id, exc.correlation_id, exc.message_type = envelope.id, envelope.correlation_id, envelope.type
        raise


def wrap(message: Message, *, correlation_id: str, causation_id: str | None = None, actor: Actor | None = None,
         message_id: str | None = None, reply_to: str | None = None) -> Envelope:
    """Put a typed payload into a new envelope."""
    return Envelope(
        id=message_id or new_message_id(),
        type=message.TYPE,
        correlation_id=correlation_id,
        causation_id=causation_id,
        actor=actor,
        reply_to=reply_to,
        payload=message.to_payload(),
    )


__all__ = [
    "UNSET", "Message", "Command", "Event", "Envelope", "Actor", "SCHEMA_VERSION", "MESSAGE_TYPES",
    "COMMAND_TYPES", "EVENT_TYPES", "TERMINAL_TASK_EVENTS", "ImportImage", "UpdateImage", "DeleteImage",
    "AttachImage", "DetachImage", "RefreshImageRepositories", "CreateImageFromSnapshot",
    "ImageImported", "ImageUpdated", "ImageDeleted", "TaskEvent", "TaskStarted", "TaskProgress", "TaskSucceeded",
    "TaskFailed", "NodeUpdated", "NodeRemoved", "VmUpdated", "VmRemoved",
    "VmSnapshotUpdated", "VmSnapshotRemoved", "image_stream", "encode", "decode", "parse", "wrap", "new_message_id",
]
