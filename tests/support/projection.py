"""Feed stored events to a projector as the broker would deliver them."""

from __future__ import annotations

from typing import Iterable

import orjson

from imagesvc.shared.broker.consumer import Delivery, Outcome
from imagesvc.shared.contracts.routing import route


def delivery_of(body: bytes, queue: str = "projector.events", *, publisher: str | None = None,
                routing_key: str | None = None) -> Delivery:
    """A first delivery of an event envelope, under the routing key its type and payload define
    (unless ``routing_key`` says otherwise), published by ``publisher`` (None: nobody vouched)."""
    data = orjson.loads(body)  # not contracts.decode: the body may be one the projector refuses
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    return Delivery(body=body, queue=queue, headers={}, message_id=data.get("id"),
                    correlation_id=data.get("correlation_id"), message_type=data.get("type"), user_id=publisher,
                    redelivered=False, attempt=1, publisher=publisher,
                    routing_key=routing_key or route(str(data.get("type")), payload).key)


def project(projector, bodies: Iterable[bytes]) -> None:
    """Apply each event with ``projector`` (an ``EventConsumer``); each must be acked."""
    for body in bodies:
        assert projector(delivery_of(body)).outcome is Outcome.ACK
