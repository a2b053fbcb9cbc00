"""Base class of typed message payloads (commands and events).

A payload class is a frozen keyword-only dataclass with a ``TYPE`` wire name. Fields that a
sender may leave out default to ``UNSET`` and are omitted from the wire, so "absent" and "null"
stay different (the image API applies manifest defaults only to absent keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from shared.errors import PoisonMessage


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
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) is not UNSET
        }

    @classmethod
    def from_payload(cls: type[M], payload: dict[str, Any]) -> M:
        """Build from a wire payload. Unknown keys are ignored (senders may be newer).

        Raises PoisonMessage when a required field is missing or has the wrong JSON type.
        """
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in payload:
                if required:
                    raise PoisonMessage(f"{cls.TYPE}: payload field {f.name!r} is required")
                continue
            value = payload[f.name]
            expected = _JSON_TYPES.get(str(f.type))
            if expected is not None and (not isinstance(value, expected) or _bool_for_int(value, expected)):
                raise PoisonMessage(f"{cls.TYPE}: payload field {f.name!r} has the wrong type")
            kwargs[f.name] = value
        return cls(**kwargs)


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
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "dict[str, Any] | None": (dict, type(None)),
}
