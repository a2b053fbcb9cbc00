"""The image: its state, its public JSON shape, and the catalogue rules the original enforces.

The gateway and the consumers share these rules: the gateway to refuse a request early (nothing
is published for a request that cannot succeed), the consumers because they decide.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Protocol

from imagesvc.domain import fields
from imagesvc.shared.db.records import DatacenterRecord, Grants, ImageRecord, UserRecord
from imagesvc.shared.errors import Refused
from imagesvc.shared.store.server import NODE_DOWN, STORE_DOWN

STATUS_OK, STATUS_PENDING = 1, 2

# Refusal messages (reference §5).
IMAGE_NOT_FOUND = "Image not found"
IMAGE_EXISTS = "Image already exists"
DC_NOT_FOUND = "Datacenter not found"
STATUS_NOT_OK = "Image status is not OK"
PERMISSION_DENIED = "Permission denied"
NO_PERMISSION = "You do not have permission to perform this action."
LOCK_NOT_ACQUIRED = "Task did not acquire lock"
IMAGE_SERVER_NOT_AVAILABLE = "Image server is not available"
NODE_NOT_OPERATIONAL = "Node is not operational"
IMAGE_USED_BY_VMS = "Image is used by some VMs"
#: ``If-Match`` named a version the image no longer (or never) had (an addition: deviations).
PRECONDITION_FAILED = "Precondition failed"

# Validation messages (reference §3.3.1).
DC_REQUIRED = (
    'You have to specify to which datacenter shall the image be bound. Either use the "dc" parameter or set the '
    '"dc_bound" parameter to false.'
)
ALIAS_TAKEN = "This alias is already in use. Please supply a different alias or version."
LIMIT_REACHED = "Maximum number of server disk images reached"
PENDING_TASKS = "Image has pending tasks."
ATTRIBUTE_FORBIDDEN = "You don't have permission to modify this attribute."
ATTACHED_TO_MANY = "Image is attached into more than one datacenter."
ATTACHED_TO_NONE = "Image is not attached into any datacenters."


def owner_missing(username: str) -> str:
    return f"Object with username={username} does not exist."


def format_time(value: datetime) -> str:
    """Python's ISO-8601 rendering (microseconds only when non-zero) with ``Z`` for UTC."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


#: The API's image object (reference §6.2) after ``dc_bound``, in the original's order.
_PUBLIC_KEYS = ("name", "uuid", "alias", "version", "owner", "access", "desc", "ostype", "size", "resize", "deploy",
                "tags", "status", "created")


def to_state(image: ImageRecord, *, with_manifest: bool = True) -> dict[str, Any]:
    """The image's full state as carried by image events: the public fields (``dc_bound`` as the
    bound datacenter's name), then ``dcs``, ``changed`` and the served ``manifest``."""
    state: dict[str, Any] = {
        "dc_bound": image.dc_bound,
        "name": image.name,
        "uuid": image.uuid,
        "alias": image.alias,
        "version": image.version,
        "owner": image.owner,
        "access": image.access,
        "desc": image.desc,
        "ostype": image.ostype,
        "size": image.size,
        "resize": image.resize,
        "deploy": image.deploy,
        "tags": list(image.tags),
        "status": image.status,
        "created": format_time(image.created),
        "dcs": sorted(image.dcs),
        "changed": format_time(image.changed),
    }
    if with_manifest:
        state["manifest"] = image.manifest_active
    return state


def public_view_of_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The API's image object (reference §6.2) from an image state, keys in the original's order."""
    view: dict[str, Any] = {"dc_bound": state.get("dc_bound") is not None}
    for key in _PUBLIC_KEYS:
        view[key] = state[key]
    return view


def public_view(image: ImageRecord) -> dict[str, Any]:
    """The API's image object of a record (one builder for both: they cannot drift apart)."""
    return public_view_of_state(to_state(image, with_manifest=False))


# --- the catalogue the rules read --------------------------------------------------------------


class Catalogue(Protocol):
    """Read access the rules need; ``shared.db.catalogue.SqlCatalogue`` implements it."""

    def image_by_name(self, name: str, *, for_update: bool = False) -> ImageRecord | None: ...

    def image_by_uuid(self, uuid: str) -> ImageRecord | None: ...

    def alias_taken(self, alias: str, version: str, *, exclude_uuid: str | None = None,
                    ignore_case: bool = False) -> bool: ...

    def count_bound(self, dc_name: str) -> int: ...

    def user(self, username: str) -> UserRecord | None: ...

    def grants(self, user_id: int) -> Grants: ...

    def datacenter(self, name: str) -> DatacenterRecord | None: ...

    def default_datacenter(self) -> DatacenterRecord: ...


# --- rules shared by the gateway (early refusal) and the consumers (the decision) ---------------


def etag(stream_version: int) -> str:
    """The image's entity tag: its event stream's version, which every change raises by one."""
    return f'"v{stream_version}"'


def expected_version_of(if_match: str) -> int | None:
    """The version an ``If-Match`` header asks for: None for ``*`` (any current image). Raises
    Refused(412) for anything that cannot match an image's tag (a weak tag never matches under
    If-Match's strong comparison; a list must name exactly one version)."""
    value = if_match.strip()
    if value == "*":
        return None
    if len(value) >= 4 and value[0] == value[-1] == '"' and value[1] == "v" and value[2:-1].isascii() \
            and value[2:-1].isdigit() and len(value) <= 24:
        return int(value[2:-1])
    raise Refused(412, PRECONDITION_FAILED, code="precondition_failed")


def check_expected_version(expected: Any, current: int) -> None:
    """Refuse (412) a change made against a version the image no longer has. ``expected`` is
    UNSET/None when the client did not ask for the check."""
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != current:
        raise Refused(412, PRECONDITION_FAILED, code="precondition_failed")


def check_import_shape(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Field-level checks of an import that need no manifest and no catalogue (deviations #15).

    Returns the normalised supplied values and the errors; a missing ``manifest_url`` and a
    DC-bound image without ``dc`` are errors here, as they are in the original.
    """
    if payload.get("dc") in ("", None):
        payload = {k: v for k, v in payload.items() if k != "dc"}  # an empty dc is no dc
    values, errors = fields.validate(payload, fields.IMPORT_FIELDS)
    if "manifest_url" not in payload:
        errors["manifest_url"] = [fields.REQUIRED]
    invalid_name = name_errors(payload.get("name"))
    if invalid_name:
        errors["name"] = invalid_name
    if not errors and values.get("dc_bound", True) and "dc" not in values:
        errors.update(dc=[DC_REQUIRED], dc_bound=[DC_REQUIRED])
    return values, fields.order_errors(errors)


def name_errors(name: Any) -> list[str]:
    """The messages of an invalid image name of ``POST /image/<name>/``; [] for a valid one."""
    try:
        fields.image_name(name)
    except fields.FieldError as exc:
        return exc.messages
    return []


def check_update_shape(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    return fields.validate(payload, fields.UPDATE_FIELDS)


class Users(Protocol):
    def user(self, username: str) -> UserRecord | None: ...


def check_owner(catalogue: Users, values: Mapping[str, Any], errors: dict[str, list[str]]) -> UserRecord | None:
    """Resolve ``values['owner']`` (when given); adds the original's error when it does not exist."""
    if "owner" not in values or "owner" in errors:
        return None
    owner = catalogue.user(values["owner"])
    if owner is None or not owner.is_active:
        errors["owner"] = [owner_missing(values["owner"])]
        return None
    return owner


def check_alias_and_limit(catalogue: Catalogue, *, alias: str, version: str, bound_dc: DatacenterRecord | None,
                          exclude_uuid: str | None, errors: dict[str, list[str]], count_limit: bool) -> None:
    """Object-level checks (run only when every field is valid): alias+version and the DC's limit."""
    if errors:
        return
    # The API's rule is stricter than the original's table constraint: any owner, any case.
    if catalogue.alias_taken(alias, version, exclude_uuid=exclude_uuid, ignore_case=True):
        errors["alias"] = [ALIAS_TAKEN]
    if count_limit and bound_dc is not None and bound_dc.image_limit is not None:
        if catalogue.count_bound(bound_dc.name) >= bound_dc.image_limit:
            errors["non_field_errors"] = [LIMIT_REACHED]


def rebind(*, current: str | None, attached: list[str], wanted: bool, is_superadmin: bool,
           errors: dict[str, list[str]]) -> str | None:
    """The new bound datacenter for a PUT of ``dc_bound`` (reference §3.4), from the image's
    current binding and attached datacenters. True binds to the single attached datacenter, false
    makes the image global; changing it is for SuperAdmins. Adds the original's errors."""
    if wanted == (current is not None):
        return current  # unchanged: nothing to check
    if not is_superadmin:
        errors["dc_bound"] = [ATTRIBUTE_FORBIDDEN]
        return current
    if not wanted:
        return None
    if len(attached) > 1:
        errors["dc_bound"] = [ATTACHED_TO_MANY]
    elif not attached:
        errors["dc_bound"] = [ATTACHED_TO_NONE]
    else:
        return attached[0]
    return current


def require_image_server(unavailable: str | None) -> None:
    """Refuse a command the image server cannot take now, from ``ImageServer.unavailable``'s
    answer: 428 Image server is not available, then 423 Node is not operational (reference §5)."""
    if unavailable == STORE_DOWN:
        raise Refused(428, IMAGE_SERVER_NOT_AVAILABLE, code="image_server_unavailable")
    if unavailable == NODE_DOWN:
        raise Refused(423, NODE_NOT_OPERATIONAL, code="node_not_operational")
