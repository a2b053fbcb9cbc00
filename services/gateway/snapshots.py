"""``POST /api/vm/<hostname_or_uuid>/snapshot/<snapname>/image/<name>/``: an image from a VM disk
snapshot (reference §3.6).

A DC-bound call: the request datacenter is the ``dc`` parameter, else the user's current one. The
gateway runs every check of ``domain.snapshots`` on the inventory as it reads it now (so a refused
request never becomes a command), then publishes ``image.snapshot`` to the agent of the node that
runs the VM, which checks again and does the work. The answer follows the answer rule (201 PENDING
for an export that takes longer than the window).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imagesvc.domain import policy, snapshots
from imagesvc.services.gateway.http import ApiError
from imagesvc.services.gateway.queries import Queries
from imagesvc.services.gateway.routes import ImageRoutes, access_of, order_by_refusal
from imagesvc.shared.contracts import CreateImageFromSnapshot
from imagesvc.shared.db.records import DatacenterRecord
from imagesvc.shared.store import ImageStore, StoreUnavailable
from imagesvc.shared.store.server import NODE_DOWN, STORE_DOWN

_DC_NOT_FOUND = "Datacenter not found"


class _Inventory:
    """``domain.snapshots.Inventory`` on the gateway's queries (statements of their own)."""

    def __init__(self, queries: Queries, store: ImageStore | None, image_server_node: str):
        self._queries = queries
        self._store = store
        self._node = image_server_node

    def vm(self, hostname_or_uuid: str):
        return self._queries.vm(hostname_or_uuid)

    def node_operational(self, hostname: str) -> bool:
        return self._queries.node_operational(hostname)

    def snapshot(self, vm_uuid: str, disk_id: int, name: str):
        return self._queries.snapshot(vm_uuid, disk_id, name)

    def snapshot_held_by_another(self, vm_uuid: str, disk_id: int, name: str) -> bool:
        # The command does not exist yet: any holder is another task.
        return self._queries.lock_holder(snapshots.snapshot_lock_name(vm_uuid, disk_id, name)) is not None

    def image_name_exists(self, name: str) -> bool:
        return self._queries.image(name, document=False) is not None

    def image_server_unavailable(self) -> str | None:
        if self._store is None:
            return STORE_DOWN  # a snapshot image needs an image server (reference §3.6)
        try:
            self._store.check()
        except StoreUnavailable:
            return STORE_DOWN
        if self._node and not self._queries.node_operational(self._node):
            return NODE_DOWN
        return None


class SnapshotRoutes:
    def __init__(self, *, images: ImageRoutes, store: ImageStore | None, image_server_node: str):
        self.images = images
        self.queries = images.queries
        self._inventory = _Inventory(self.queries, store, image_server_node)

    async def create_image(self, request: Request) -> Response:
        # ``order_by`` comes after the VM, disk and snapshot look-ups here (reference §5).
        return await self.images.run_command(request, self._prepare, entry=self._entry, order_by_first=False)

    async def _entry(self, request: Request) -> policy.Access:
        # Who may ask depends on the request datacenter, which the body may name: decided in
        # ``_prepare`` (403 first, as the reference orders it).
        return await access_of(self.images.auth, self.queries, request)

    def _request_dc(self, request: Request, access: policy.Access, data: dict[str, Any]) -> DatacenterRecord:
        named = data.get("dc", request.query_params.get("dc"))
        if named is not None:
            found = self.queries.datacenter(named) if isinstance(named, str) else None
            if found is None or not access.sees(found):
                raise ApiError(404, _DC_NOT_FOUND)
            return found
        current = access.user.default_dc_id
        found = self.queries.datacenter_by_id(current) if current is not None else None
        return found if found is not None and access.sees(found) else self.queries.default_datacenter()

    def _prepare(self, request: Request, access: policy.Access, data: dict[str, Any]):
        """(Thread pool.) The checks, then the command for the VM's node."""
        dc = self._request_dc(request, access, data)
        name = request.path_params["name"]
        snapname = request.path_params["snapname"]
        plan = snapshots.check(self._inventory, access=access, request_dc=dc.name,
                               vm_ref=request.path_params["vm"], snapname=snapname, name=name, data=data,
                               users=self.queries,
                               order_by_refusal=order_by_refusal(data["order_by"]) if "order_by" in data else None)
        owner = self.queries.user(plan.values["owner"]) if "owner" in plan.values else access.user
        command = CreateImageFromSnapshot(name=name, vm=plan.vm.uuid, snapshot=snapname, disk_id=plan.disk.disk_id,
                                          **plan.values)
        return command, owner, dc, plan.vm.node
