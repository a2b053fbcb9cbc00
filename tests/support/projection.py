"""Feed stored events to a projector as the broker would deliver them."""

from __future__ import annotations

from typing import Iterable

from shared import contracts
from shared.broker.consumer import Delivery, Outcome


def delivery_of(body: bytes, queue: str = "projector.events") -> Delivery:
    """A first delivery of an event envelope."""
    envelope = contracts.decode(body)
    return Delivery(body=body, queue=queue, headers={}, message_id=envelope.id, correlation_id=envelope.correlation_id,
                    message_type=envelope.type, user_id=None, redelivered=False, attempt=1)


def project(projector, bodies: Iterable[bytes]) -> None:
    """Apply each event with ``projector`` (an ``EventConsumer``); each must be acked."""
    for body in bodies:
        assert projector(delivery_of(body)).outcome is Outcome.ACK
