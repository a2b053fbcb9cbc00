"""Who may do what (reference §4.2).

So far the catalogue has SuperAdmins only: a SuperAdmin passes every check; anybody else fails
the entry permission (``IsAnyDcImageAdmin``: 403 ``Permission denied``). The gateway applies this
to requests and every consumer re-applies it to the actor of each command, so a command put
straight on the broker gets no further than an HTTP request would.
"""

from __future__ import annotations

from domain.images import Catalogue, PERMISSION_DENIED
from shared.contracts import Actor
from shared.db.records import UserRecord
from shared.errors import Refused


def may_manage_images(user: UserRecord | None) -> bool:
    return user is not None and user.is_active and user.api_access and user.is_superadmin


def require_image_admin(user: UserRecord | None) -> UserRecord:
    """The entry permission of the ``/image`` endpoints. Raises Refused(403)."""
    if not may_manage_images(user):
        raise Refused(403, PERMISSION_DENIED, code="forbidden")
    return user  # type: ignore[return-value]


def actor_user(catalogue: Catalogue, actor: Actor | None) -> UserRecord:
    """The command's actor, re-checked against the current accounts. Raises Refused(403)."""
    user = catalogue.user(actor.user) if actor is not None else None
    return require_image_admin(user)


def actor_name(actor: Actor | None) -> str | None:
    return actor.user if actor is not None else None
