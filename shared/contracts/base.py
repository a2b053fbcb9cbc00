"""Base class of typed message payloads (commands and events).

A payload class is a frozen keyword-only dataclass with a ``TYPE`` wire name. Fields that a
sender may leave out default to ``UNSET`` and are omitted from the wire, so "absent" and "null"
stay different (the image API applies manifest defaults only to absent keys).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, TypeVar

from imagesvc.shared.errors import PoisonMessage


class _Unset:
    _instance: "_Unset | None" = None

    def __new__(cls) -> "_Unset":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNSET"


#: Marks an optional payload field the sender did not supply.
UNSET: Any = _Unset()

M = TypeVar("M", bound="Message")


class Message:
    """Mixin for payload dataclasses: wire name, payload (de)serialisation."""

    TYPE: ClassVar[str]
    #: "command" or "event"; set by the subclasses in commands.py / events.py.
    KIND: ClassVar[str]

    def to_payload(self) -> dict[str, Any]:
        payload = {}
        for name, _required, _expected in _field_specs(type(self)):
            value = getattr(self, name)
            if value is not UNSET:
                payload[name] = value
        return payload

    @classmethod
    def from_payload(cls: type[M], payload: dict[str, Any]) -> M:
        """Build from a wire payload. Unknown keys are ignored (senders may be newer).

        Raises PoisonMessage when a required field is missing or has the wrong JSON type.
        """
        kwargs: dict[str, Any] = {}
        for name, required, expected in _field_specs(cls):
            if name not in payload:
                if required:
                    raise PoisonMessage(f"{cls.TYPE}: payload field {name!r} is required")
                continue
            value = payload[name]
            if expected is not None and (not isinstance(value, expected) or _bool_for_int(value, expected)):
                raise PoisonMessage(f"{cls.TYPE}: payload field {name!r} has the wrong type")
            kwargs[name] = value
        return cls(**kwargs)


@functools.cache
def _field_specs(cls: type) -> tuple[tuple[str, bool, type | tuple[type, ...] | None], ...]:
    """(name, required, JSON type or None) of a payload class's fields, worked out once per class
    (``dataclasses.fields`` is a measurable share of a consumer's CPU)."""
    return tuple(
        (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
         _JSON_TYPES.get(str(f.type)))
        for f in dataclasses.fields(cls)
    )


def _bool_for_int(value: Any, expected: type | tuple[type, ...]) -> bool:
    """JSON true/false is not an integer, although Python's bool subclasses int."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return isinstance(value, bool) and int in kinds


# Strictly typed fields; ``Any`` fields are validated by the consumer with the API's messages.
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "dict[str, Any]": dict,
    "list[str]": list,
    "list[dict[str, Any]]": list,
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "dict[str, Any] | None": (dict, type(None)),
}
