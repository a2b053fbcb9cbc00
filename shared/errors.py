"""The error taxonomy every process shares.

``CommandFailed`` and its subclasses are *outcomes*: a handler raises one to end its task in
failure; the runner records the failure (a ``task.failed`` event) and acknowledges the command.
``Transient`` means "try again later"; anything else unexpected is treated the same way, with a
bounded number of attempts before the message is dead-lettered.
"""

from __future__ import annotations


class CommandFailed(Exception):
    """A command ended in failure. Carries what the original API would answer.

    ``http_code`` is the status the gateway answers with, ``result`` the task result the client
    sees (a ``{"detail": ...}`` body for refusals, ``{field: [messages]}`` for validation errors,
    a plain string for task-level failures), and ``code`` a stable machine-readable reason.
    """

    http_code: int = 400
    code: str = "failed"

    def __init__(self, result: object, *, http_code: int | None = None, code: str | None = None):
        super().__init__(result)
        self.result = result
        if http_code is not None:
            self.http_code = http_code
        if code is not None:
            self.code = code


class Refused(CommandFailed):
    """A refusal with the original's status code and ``{"detail": message}`` body (403, 404, 406, 412, 417, 423, 428)."""

    def __init__(self, http_code: int, detail: str, *, code: str = "refused"):
        super().__init__({"detail": detail}, http_code=http_code, code=code)
        self.detail = detail


class Invalid(CommandFailed):
    """Field validation errors: 400 with ``{field: [messages]}``."""

    code = "invalid"

    def __init__(self, errors: dict[str, list[str]], *, code: str | None = None):
        super().__init__(errors, http_code=400, code=code)
        self.errors = errors


class InvalidData(CommandFailed):
    """The database refused a value as such (it can never be stored): 400, never retried."""

    code = "invalid_data"

    def __init__(self, detail: str):
        super().__init__({"detail": detail}, http_code=400)


class Superseded(Exception):
    """Another delivery of the same command took its work over (the broker gave the command out
    again while this delivery still ran: its consumer's channel closed, a delivery timed out) and
    re-took its lease (``shared.db.locks.take``). This delivery stops without an outcome: the other
    one decides the task."""


class Transient(Exception):
    """A dependency is temporarily unavailable; the message should be retried later."""


class PublishFailed(Transient):
    """The broker did not confirm a publish within the deadline (or refused it)."""


class Nacked(PublishFailed):
    """The broker refused a publish (nack): on our queues, a full queue (``reject-publish``)."""


class Unroutable(PublishFailed):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class PoisonMessage(Exception):
    """A delivery that can never be handled (undecodable, unknown type, wrong schema).

    ``message_id`` and ``correlation_id`` are whatever could be read from it, so a terminal
    event can still be emitted for the task.
    """

    def __init__(self, reason: str, *, message_id: str | None = None, correlation_id: str | None = None,
                 message_type: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.message_type = message_type


class OutOfOrder(Transient):
    """An event arrived before one it depends on; it is retried once the gap is filled."""
