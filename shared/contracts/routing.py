"""Where each event is published, and which publishers may publish it: part of the contract.

Routing keys (topic exchanges):

- imagesvc's own events (``image.*``, ``task.*``) go to the events exchange with
  ``<type>.<scope>``: ``<scope>`` is ``dc.<datacenter word>`` for an event that belongs to a
  datacenter (an image bound to it, a task placed in it) or ``global``. So RabbitMQ's topic
  permissions can give a subscriber exactly the datacenters it may see: it can only bind with keys
  that end in its scopes (``#.dc.prague``, ``#.global``). An image event that moves an image out of
  a scope (a change of ``dc_bound``) is also sent to the old scope (an AMQP ``CC`` key), so that
  scope's subscribers learn that the image left.
- Other systems' facts (``node.*``, ``vm.*``) go to the inventory exchange with the event type as
  routing key.

A datacenter word is the datacenter's name with every character other than ``A-Z a-z 0-9 _ -``
written as ``%XX`` (its UTF-8 bytes in upper-case hexadecimal): a topic key's words are separated
by dots, which datacenter names may contain (``my.dc`` is ``dc.my%2Edc``).

Event families name who may publish: ``image`` and ``task`` events only imagesvc's own service
users, ``node`` and ``vm`` events also the broker users granted that family (``Publishers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: The families of events other systems publish (onto the inventory exchange).
INVENTORY_FAMILIES = frozenset({"node", "vm"})
#: The families only imagesvc itself publishes (onto the events exchange).
SERVICE_FAMILIES = frozenset({"image", "task"})
GLOBAL_SCOPE = "global"
_WORD_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def family(event_type: str) -> str:
    """``image.updated`` -> ``image``; ``vm.snapshot.removed`` -> ``vm``."""
    return event_type.split(".", 1)[0]


def is_inventory(event_type: str) -> bool:
    return family(event_type) in INVENTORY_FAMILIES


def datacenter_word(name: str) -> str:
    """``name`` as one word of a topic routing key (see the module docstring)."""
    return "".join(ch if ch in _WORD_SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def scope(dc: str | None) -> str:
    """The routing scope of something bound to datacenter ``dc`` (None: ``global``)."""
    return GLOBAL_SCOPE if not dc else f"dc.{datacenter_word(dc)}"


@dataclass(frozen=True)
class Routing:
    """Where one event goes: its routing key, and the keys it is copied to (AMQP ``CC``)."""

    key: str
    cc: tuple[str, ...] = ()


def route(event_type: str, payload: Mapping[str, Any]) -> Routing:
    """The routing of an event of ``event_type`` with ``payload`` (its envelope's payload).

    Total: a payload that lacks the fields a scope is read from is ``global``, so the routing of
    any stored or received event can be computed (and compared with where it arrived)."""
    kind = family(event_type)
    if kind == "image":
        image = payload.get("image")
        dc = image.get("dc_bound") if isinstance(image, dict) else payload.get("dc_bound")
        key = f"{event_type}.{scope(_name(dc))}"
        if "previous_dc_bound" in payload:
            left = f"{event_type}.{scope(_name(payload['previous_dc_bound']))}"
            if left != key:
                return Routing(key, (left,))
        return Routing(key)
    if kind == "task":
        return Routing(f"{event_type}.{scope(_name(payload.get('dc')))}")
    return Routing(event_type)


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Publishers:
    """Which broker users may publish which events, as RabbitMQ vouches for them (the AMQP
    ``user_id`` it validates against the publishing connection's user).

    ``services``: imagesvc's own broker users, who may publish every event; ``inventory``: per
    inventory family (``node``, ``vm``), the other broker users who may publish it.
    """

    services: frozenset[str]
    inventory: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def refusal(self, event_type: str, publisher: str | None) -> str | None:
        """Why ``publisher`` may not publish an event of ``event_type``, or None if it may."""
        if publisher in self.services:
            return None
        kind = family(event_type)
        if kind in INVENTORY_FAMILIES and publisher in self.inventory.get(kind, frozenset()):
            return None
        who = f"broker user {publisher!r}" if publisher else "a publisher the broker did not name (no user_id)"
        if kind in INVENTORY_FAMILIES:
            return f"{who} may not publish {kind} events"
        return f"{who} is not one of imagesvc's service users, who alone publish {kind} events"
