"""Who may do what (reference §4.2-4.4), decided from an ``Access``: a user and what they hold.

- **SuperAdmin** passes every check in every datacenter.
- **Admin** of a DC: its owner, or a member of a role attached to it that holds ``admin``.
- **ImageAdmin** of a DC: ``image_admin`` there *and* Admin there.
- **ImageImportAdmin** of a DC: ``image_import_admin`` there.

The ``/image`` endpoints admit a user who is ImageAdmin somewhere (else 403 ``Permission
denied``); an image is then theirs to see and manage only if it is bound to one of those
datacenters (else 403 ``You do not have permission to perform this action.``); an import also
needs ImageImportAdmin in the target datacenter. The gateway applies these rules to requests, and
every consumer re-applies them to the actor of each command with the roles as they are then, so a
command put straight on the broker gets no further than an HTTP request would.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagesvc.domain.images import NO_PERMISSION, PERMISSION_DENIED, Catalogue
from imagesvc.shared.contracts import Actor
from imagesvc.shared.db.records import DatacenterRecord, Grants, UserRecord
from imagesvc.shared.errors import Refused

ADMIN, IMAGE_ADMIN, IMAGE_IMPORT_ADMIN = "admin", "image_admin", "image_import_admin"
PUBLIC = 1
_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Access:
    """A user and what they hold. A SuperAdmin's grants are never needed (and not loaded)."""

    user: UserRecord
    grants: Grants = Grants()

    @property
    def is_superadmin(self) -> bool:
        return self.user.is_superadmin

    def _held(self, dc: str) -> frozenset[str]:
        return self.grants.permissions.get(dc, _NOTHING)

    def is_admin(self, dc: str) -> bool:
        return self.is_superadmin or dc in self.grants.owned or ADMIN in self._held(dc)

    def is_image_admin(self, dc: str) -> bool:
        return self.is_superadmin or (IMAGE_ADMIN in self._held(dc) and self.is_admin(dc))

    def is_image_import_admin(self, dc: str) -> bool:
        return self.is_superadmin or IMAGE_IMPORT_ADMIN in self._held(dc)

    def is_image_import_admin_somewhere(self) -> bool:
        return self.is_superadmin or any(IMAGE_IMPORT_ADMIN in held for held in self.grants.permissions.values())

    def image_admin_dcs(self) -> frozenset[str]:
        """The datacenters where the user is ImageAdmin (``request.dcs`` of the original); for a
        SuperAdmin use ``list_scope``, which means "all"."""
        return frozenset(dc for dc in self.grants.permissions if self.is_image_admin(dc))

    def sees(self, dc: DatacenterRecord) -> bool:
        """A datacenter "visible to the user" (reference §4.3): public, their current one, owned,
        or sharing a role with them."""
        return (self.is_superadmin or dc.access == PUBLIC or dc.id == self.user.default_dc_id
                or dc.owner_id == self.user.id or dc.name in self.grants.permissions)


def is_usable(user: UserRecord | None) -> bool:
    return user is not None and user.is_active and user.api_access


def access_for(catalogue: Catalogue, user: UserRecord) -> Access:
    """The user's access, with their grants loaded unless they are a SuperAdmin."""
    return Access(user) if user.is_superadmin else Access(user, catalogue.grants(user.id))


def require_image_admin_somewhere(access: Access | None) -> Access:
    """The entry permission of the ``/image`` endpoints (``IsAnyDcImageAdmin``). Raises Refused(403)."""
    if access is None or not is_usable(access.user) or not (access.is_superadmin or access.image_admin_dcs()):
        raise Refused(403, PERMISSION_DENIED, code="forbidden")
    return access


def require_image_import_admin_somewhere(access: Access | None) -> Access:
    """The entry permission of the ``/imagestore`` endpoints (``IsAnyDcImageImportAdmin``): a
    SuperAdmin, or ImageImportAdmin in any datacenter. Raises Refused(403 ``Permission denied``)."""
    if access is None or not is_usable(access.user) or not access.is_image_import_admin_somewhere():
        raise Refused(403, PERMISSION_DENIED, code="forbidden")
    return access


def may_manage(access: Access, dc_bound: str | None) -> bool:
    """The object rule: a non-SuperAdmin manages only images bound to one of their ImageAdmin DCs."""
    return access.is_superadmin or (dc_bound is not None and access.is_image_admin(dc_bound))


def require_manage(access: Access, dc_bound: str | None) -> None:
    if not may_manage(access, dc_bound):
        raise Refused(403, NO_PERMISSION, code="forbidden")


def require_import_into(access: Access, dc: str) -> None:
    """An import into ``dc``: the object rule for the prospective binding, then ImageImportAdmin."""
    require_manage(access, dc)
    if not access.is_image_import_admin(dc):
        raise Refused(403, NO_PERMISSION, code="forbidden")


def require_superadmin(access: Access) -> None:
    """Attaching and detaching images (reference §3.8). Raises Refused(403 ``Permission denied``)."""
    if not access.is_superadmin:
        raise Refused(403, PERMISSION_DENIED, code="forbidden")


def list_scope(access: Access) -> frozenset[str] | None:
    """Which bound datacenters' images a user lists: None for all (SuperAdmin, global images
    included), else their ImageAdmin DCs (global images are invisible to them)."""
    return None if access.is_superadmin else access.image_admin_dcs()


def may_read_task(access: Access, dc: str, *, user_id: int, owner_id: int) -> bool:
    """``UserTask``: an Admin of the task's datacenter, or the task's user or owner."""
    return access.is_admin(dc) or access.user.id in (user_id, owner_id)


def may_read_recorded_task(access: Access, dc: str | None, *, user: str | None, owner: str | None) -> bool:
    """``UserTask`` for a task placed by its recorded facts rather than by its id's numbers (a
    task id a program chose): an Admin of its datacenter, or its user or owner, by name."""
    return (dc is not None and access.is_admin(dc)) or access.user.username in (user, owner)


def actor_access(catalogue: Catalogue, actor: Actor | None, user: UserRecord | None = None) -> Access:
    """The command's actor re-checked against the current accounts and roles, up to the entry
    permission. ``user``: the actor's record if the caller already loaded it. Raises Refused(403)."""
    if user is None and actor is not None:
        user = catalogue.user(actor.user)
    if not is_usable(user):
        raise Refused(403, PERMISSION_DENIED, code="forbidden")
    return require_image_admin_somewhere(access_for(catalogue, user))  # type: ignore[arg-type]


def actor_import_access(catalogue: Catalogue, actor: Actor | None) -> Access:
    """As ``actor_access``, up to the ``/imagestore`` entry permission. Raises Refused(403)."""
    user = catalogue.user(actor.user) if actor is not None else None
    if not is_usable(user):
        raise Refused(403, PERMISSION_DENIED, code="forbidden")
    return require_image_import_admin_somewhere(access_for(catalogue, user))  # type: ignore[arg-type]


def actor_name(actor: Actor | None) -> str | None:
    return actor.user if actor is not None else None
