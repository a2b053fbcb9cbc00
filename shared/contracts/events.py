"""Events: facts in the past tense, published on the events exchange for any number of listeners.

Image events carry the image's full new state and its stream version (1, 2, 3, ... per image
uuid, never reused, not even after a delete and re-import), so a subscriber can order and
deduplicate them without asking anyone. Task events tell how a command ended; a task's terminal
event names the image stream version it produced (``stream``/``stream_version``), so a reader can
wait for that image state before it trusts the task's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared.contracts.base import Message


class Event(Message):
    KIND: ClassVar[str] = "event"

    def stream_position(self) -> tuple[str, int] | None:
        """(stream id, version) for versioned aggregate events; None for the others."""
        return None


def image_stream(uuid: str) -> str:
    return f"image:{uuid}"


@dataclass(frozen=True, kw_only=True)
class ImageImported(Event):
    TYPE: ClassVar[str] = "image.imported"
    image: dict[str, Any]
    version: int

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.image["uuid"]), self.version


@dataclass(frozen=True, kw_only=True)
class ImageUpdated(Event):
    TYPE: ClassVar[str] = "image.updated"
    image: dict[str, Any]
    version: int
    changed: list[str]

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.image["uuid"]), self.version


@dataclass(frozen=True, kw_only=True)
class ImageDeleted(Event):
    TYPE: ClassVar[str] = "image.deleted"
    uuid: str
    name: str
    version: int

    def stream_position(self) -> tuple[str, int]:
        return image_stream(self.uuid), self.version


@dataclass(frozen=True, kw_only=True)
class TaskEvent(Event):
    """Common fields of the task events. ``dc``/``owner`` place the task (task log, permissions)."""

    task_id: str
    command: str
    object_name: str
    user: str | None = None
    owner: str | None = None
    dc: str | None = None
    stream: str | None = None
    stream_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class TaskStarted(TaskEvent):
    """The consumer accepted long-running work; the gateway answers 201 PENDING."""

    TYPE: ClassVar[str] = "task.started"


@dataclass(frozen=True, kw_only=True)
class TaskProgress(TaskEvent):
    """A running task's progress (an import's bytes transferred), a few per second at most.
    ``total`` is None when unknown. Only informative: readers may drop any of them."""

    TYPE: ClassVar[str] = "task.progress"
    done: int
    total: int | None = None


@dataclass(frozen=True, kw_only=True)
class TaskSucceeded(TaskEvent):
    TYPE: ClassVar[str] = "task.succeeded"
    http_code: int = 200
    result: Any = None


@dataclass(frozen=True, kw_only=True)
class TaskFailed(TaskEvent):
    """``http_code`` and ``result`` are what the original API answers; ``code`` is machine-readable."""

    TYPE: ClassVar[str] = "task.failed"
    http_code: int
    result: Any
    code: str


TERMINAL_TASK_EVENTS = frozenset({TaskSucceeded.TYPE, TaskFailed.TYPE})
