"""``imagesvc admin ...``: accounts, datacenters, roles, compute nodes and VMs, straight in the database.

Scriptable: a command that creates an API key prints it alone on the last line; ``list``
commands print one JSON object per line; a failure prints one line on stderr and exits 1 (2 for
an argument that could never be stored, as for argparse's own refusals).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Callable, Iterator



def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``user``, ``dc``, ``role`` (alias ``group``), ``node`` and ``vm`` command groups."""
    user = commands.add_parser("user", help="users and their API keys").add_subparsers(dest="what", required=True)
    create = user.add_parser("create", help="create a user; prints its API key last")
    create.add_argument("username")
    create.add_argument("--superadmin", action="store_true")
    create.add_argument("--no-api-access", action="store_true", help="the user may not use the API")
    create.add_argument("--no-key", action="store_true", help="create no API key")
    create.set_defaults(func=_user_create)
    key = user.add_parser("key", help="replace a user's API key (prints it last), or revoke it")
    key.add_argument("username")
    key.add_argument("--revoke", action="store_true")
    key.set_defaults(func=_user_key)
    password = user.add_parser("password", help="set a user's password (for POST /api/accounts/login/), "
                                                "read from the first line of standard input")
    password.add_argument("username")
    password.set_defaults(func=_user_password)
    change = user.add_parser("set", help="change a user's flags")
    change.add_argument("username")
    for flag in ("active", "api-access", "superadmin"):
        change.add_argument(f"--{flag}", choices=["yes", "no"])
    change.set_defaults(func=_user_set)
    user.add_parser("list", help="all users").set_defaults(func=_user_list)

    dc = commands.add_parser("dc", help="datacenters").add_subparsers(dest="what", required=True)
    create = dc.add_parser("create", help="create a datacenter")
    create.add_argument("name")
    create.add_argument("--owner", help="username of the DC owner (an Admin of it)")
    create.add_argument("--public", action="store_true", help="visible to every user")
    create.add_argument("--image-limit", type=int, help="most images bound to it")
    create.set_defaults(func=_dc_create)
    dc.add_parser("list", help="all datacenters").set_defaults(func=_dc_list)

    role = commands.add_parser("role", aliases=["group"], help="roles: permissions granted in datacenters")
    roles = role.add_subparsers(dest="what", required=True)
    create = roles.add_parser("create", help="create a role")
    create.add_argument("name")
    create.add_argument("--permission", action="append", default=[],
                        choices=["admin", "image_admin", "image_import_admin"])
    create.set_defaults(func=_role_create)
    for verb, func, other in (("add-user", _role_add_user, "username"), ("remove-user", _role_remove_user, "username"),
                              ("attach", _role_attach, "dc"), ("detach", _role_detach, "dc")):
        sub = roles.add_parser(verb)
        sub.add_argument("role")
        sub.add_argument(other)
        sub.set_defaults(func=func)
    roles.add_parser("list", help="all roles with their users and datacenters").set_defaults(func=_role_list)

    node = commands.add_parser("node", help="compute nodes (also kept up to date by node.* events)")
    nodes = node.add_subparsers(dest="what", required=True)
    change = nodes.add_parser("set", help="record a node's state as of now")
    change.add_argument("hostname")
    change.add_argument("--status", required=True,
                        help="online (the only operational one), maintenance, unreachable, unlicensed, ...")
    change.add_argument("--uuid", help="the node's uuid")
    change.add_argument("--address", help="the node's address")
    change.set_defaults(func=_node_set)
    nodes.add_parser("list", help="all nodes").set_defaults(func=_node_list)
    remove = nodes.add_parser("remove", help="remove a node from the inventory")
    remove.add_argument("hostname")
    remove.set_defaults(func=_node_remove)
    _register_vm(commands)


def _register_vm(commands: argparse._SubParsersAction) -> None:
    vm = commands.add_parser("vm", help="VMs and their disk snapshots (also kept up to date by vm.* events)")
    vms = vm.add_subparsers(dest="what", required=True)
    change = vms.add_parser("set", help="record a VM's state as of now")
    change.add_argument("uuid")
    change.add_argument("--hostname", required=True)
    change.add_argument("--dc", required=True, help="the name of the VM's datacenter")
    change.add_argument("--node", required=True, help="the hostname of the compute node it is on")
    change.add_argument("--status", required=True,
                        help="running, stopped, stopping, frozen (the operational ones), pending, notcreated, ...")
    change.add_argument("--ostype", required=True, type=int, help="1 Linux, 2 SunOS, 3 BSD, 4 Windows, "
                                                                  "5 SunOS zone, 6 Linux zone")
    change.add_argument("--disk", action="append", default=[], metavar="ID:SIZE[:IMAGE_UUID]",
                        help="a disk: its id (from 1), size in MiB and the uuid of the image it was made from")
    change.add_argument("--replica-of", metavar="VM_UUID",
                        help="the uuid of the VM this one is a replica of (its disks count for images in use; "
                             "the list of an image's VMs leaves it out)")
    change.set_defaults(func=_vm_set)
    vms.add_parser("list", help="all VMs").set_defaults(func=_vm_list)
    remove = vms.add_parser("remove", help="remove a VM (and its snapshots) from the inventory")
    remove.add_argument("uuid")
    remove.set_defaults(func=_vm_remove)

    snapshot = vms.add_parser("snapshot", help="VM disk snapshots").add_subparsers(dest="snapshot_what",
                                                                                    required=True)
    change = snapshot.add_parser("set", help="record a snapshot's state as of now")
    change.add_argument("vm", help="the VM's uuid or hostname")
    change.add_argument("name")
    change.add_argument("--disk", required=True, type=int, help="the id of the VM's disk")
    change.add_argument("--status", default="ok", help="ok (the usable one, the default), pending, lost, ...")
    change.set_defaults(func=_snapshot_set)
    listing = snapshot.add_parser("list", help="all snapshots, or one VM's")
    listing.add_argument("vm", nargs="?", help="the VM's uuid or hostname")
    listing.set_defaults(func=_snapshot_list)
    remove = snapshot.add_parser("remove", help="remove a snapshot")
    remove.add_argument("vm", help="the VM's uuid or hostname")
    remove.add_argument("name")
    remove.add_argument("--disk", required=True, type=int, help="the id of the VM's disk")
    remove.set_defaults(func=_snapshot_remove)


@contextlib.contextmanager
def _transaction() -> Iterator:
    from imagesvc.settings import for_existing_database
    from imagesvc.shared.db.engine import make_engine, write_transaction

    engine = make_engine(for_existing_database().database_url, pool_size=1)
    try:
        with write_transaction(engine) as conn:
            yield conn
    finally:
        engine.dispose()


def _run(action: Callable[..., int | None]) -> int:
    from sqlalchemy.exc import DBAPIError

    from imagesvc.shared.db.accounts import AccountExists, NotFound

    try:
        with _transaction() as conn:
            return action(conn) or 0
    except AccountExists as exc:
        print(f"imagesvc: {exc} exists already", file=sys.stderr)
    except (NotFound, ValueError) as exc:
        print(f"imagesvc: {exc}", file=sys.stderr)
    except DBAPIError as exc:
        print(f"imagesvc: the database refused it: {type(exc.orig).__name__ if exc.orig else exc}", file=sys.stderr)
    return 1


def _yes(value: str | None) -> bool | None:
    return None if value is None else value == "yes"


# --- users -------------------------------------------------------------------------------------


def _user_create(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts
    from imagesvc.shared.keys import new_api_key

    key = None if args.no_key else new_api_key()

    def create(conn) -> None:
        accounts.create_user(conn, args.username, api_key=key, is_superadmin=args.superadmin,
                             api_access=not args.no_api_access)

    kind = "SuperAdmin" if args.superadmin else "user"
    return _report(_run(create), key, f"created {kind} {args.username!r} without an API key",
                   f"created {kind} {args.username!r}; its API key (shown once):")


def _user_key(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts
    from imagesvc.shared.keys import new_api_key

    key = None if args.revoke else new_api_key()

    def change(conn) -> None:
        if not accounts.set_api_key(conn, args.username, key):
            raise accounts.NotFound(f"no user {args.username!r}")

    return _report(_run(change), key, f"revoked the API key of {args.username!r}",
                   f"replaced the API key of {args.username!r}; the new key (shown once):")


def _report(status: int, key: str | None, without_key: str, with_key: str) -> int:
    """After a successful command, say what happened; a new key goes alone on the last line."""
    return _done(status, without_key if key is None else f"{with_key}\n{key}")


def _done(status: int, message: str) -> int:
    """After a command committed (status 0), say what it did."""
    if status == 0:
        print(message)
    return status


def _user_password(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts
    from imagesvc.shared.keys import hash_password

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("imagesvc: no password on standard input", file=sys.stderr)
        return 1
    hashed = hash_password(password)  # never the password itself, and never printed
    return _done(_run(lambda conn: accounts.update_user(conn, args.username, password_hash=hashed)),
                 f"set the password of {args.username!r}")


def _user_set(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    values = {column: _yes(getattr(args, attribute)) for column, attribute in
              (("is_active", "active"), ("api_access", "api_access"), ("is_superadmin", "superadmin"))}
    values = {k: v for k, v in values.items() if v is not None}
    changed = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in values.items()) or "nothing to change"
    return _done(_run(lambda conn: accounts.update_user(conn, args.username, **values)),
                 f"user {args.username!r}: {changed}")


def _user_list(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _run(lambda conn: _print_lines(accounts.list_users(conn)))


# --- datacenters -------------------------------------------------------------------------------


def _dc_create(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    def create(conn) -> None:
        accounts.create_datacenter(conn, args.name, owner=args.owner, public=args.public,
                                   image_limit=args.image_limit)
        print(f"created datacenter {args.name!r}")

    return _run(create)


def _dc_list(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _run(lambda conn: _print_lines(accounts.list_datacenters(conn)))


# --- roles -------------------------------------------------------------------------------------


def _role_create(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    def create(conn) -> None:
        accounts.create_role(conn, args.name, args.permission)
        print(f"created role {args.name!r} with {sorted(set(args.permission)) or 'no permissions'}")

    return _run(create)


def _role_add_user(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _done(_run(lambda conn: accounts.add_member(conn, args.role, args.username)),
                 f"added {args.username!r} to role {args.role!r}")


def _role_remove_user(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _done(_run(lambda conn: accounts.remove_member(conn, args.role, args.username)),
                 f"removed {args.username!r} from role {args.role!r}")


def _role_attach(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _done(_run(lambda conn: accounts.attach_role(conn, args.role, args.dc)),
                 f"attached role {args.role!r} to datacenter {args.dc!r}")


def _role_detach(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _done(_run(lambda conn: accounts.detach_role(conn, args.role, args.dc)),
                 f"detached role {args.role!r} from datacenter {args.dc!r}")


def _role_list(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts

    return _run(lambda conn: _print_lines(accounts.list_roles(conn)))


# --- compute nodes -----------------------------------------------------------------------------


def _node_set(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import nodes
    from imagesvc.shared.db.models import utcnow

    record = nodes.NodeRecord(hostname=args.hostname, status=args.status, uuid=args.uuid, address=args.address,
                              changed_at=utcnow())
    try:
        nodes.check(record)
    except ValueError as exc:
        return _bad_argument(str(exc))

    def write(conn) -> None:
        if not nodes.put(conn, record):
            raise ValueError(_newer_fact(args.hostname))
        operational = "operational" if record.operational else "not operational"
        print(f"node {args.hostname!r} is {args.status} ({operational})")
        if args.status not in nodes.KNOWN_STATUSES:
            print(f"imagesvc: note: {args.status!r} is not one of {', '.join(nodes.KNOWN_STATUSES)}",
                  file=sys.stderr)

    return _run(write)


def _node_list(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db import nodes

    def show(conn) -> None:
        _print_lines([{"hostname": n.hostname, "status": n.status, "uuid": n.uuid, "address": n.address,
                       "changed_at": n.changed_at.isoformat().replace("+00:00", "Z")} for n in nodes.list_all(conn)])

    return _run(show)


def _node_remove(args: argparse.Namespace) -> int:
    from imagesvc.shared.contracts.events import node_hostname_problem
    from imagesvc.shared.db import accounts, nodes
    from imagesvc.shared.db.models import utcnow

    problem = node_hostname_problem(args.hostname)
    if problem:
        return _bad_argument(problem)

    def delete(conn) -> None:
        if nodes.get(conn, args.hostname) is None:
            raise accounts.NotFound(f"no node {args.hostname!r}")
        if not nodes.remove(conn, args.hostname, utcnow()):
            raise ValueError(_newer_fact(args.hostname))
        print(f"removed node {args.hostname!r}")

    return _run(delete)


# --- VMs and their snapshots ---------------------------------------------------------------------


def _vm_set(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import vms
    from imagesvc.shared.db.models import utcnow

    try:
        disks = tuple(_disk(text) for text in args.disk)
        record = vms.VmRecord(uuid=args.uuid, hostname=args.hostname, dc=args.dc, node=args.node, status=args.status,
                              ostype=args.ostype, disks=disks, changed_at=utcnow(), replica_of=args.replica_of)
        vms.check_vm(record)
    except ValueError as exc:
        return _bad_argument(str(exc))

    def write(conn) -> None:
        if not vms.put_vm(conn, record):
            raise ValueError(_newer_fact(args.uuid, "VM"))
        stored = vms.get_vm(conn, args.uuid)
        print(f"VM {args.uuid.lower()!r} ({stored.hostname if stored else args.hostname}) is {args.status} "
              f"in {args.dc} on {args.node}")
        if stored is not None and stored.hostname != args.hostname:
            print(f"imagesvc: note: another VM holds the hostname {args.hostname!r} by a newer fact; this one is "
                  f"listed under its uuid until a newer fact about it", file=sys.stderr)
        if args.status not in vms.VM_OPERATIONAL_STATUSES:
            print(f"imagesvc: note: {args.status!r} is not one of {', '.join(vms.VM_OPERATIONAL_STATUSES)} "
                  "(no image can be made from its snapshots)", file=sys.stderr)

    return _run(write)


def _disk(text: str):
    """``ID:SIZE[:IMAGE_UUID]`` as a Disk. Raises ValueError with a sentence."""
    from imagesvc.shared.db.vms import Disk

    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(part.strip().isdigit() for part in parts[:2]):
        raise ValueError(f"--disk {text!r}: expected ID:SIZE[:IMAGE_UUID] (integers, the size in MiB)")
    image_uuid = parts[2] if len(parts) == 3 and parts[2] else None
    return Disk(disk_id=int(parts[0]), size=int(parts[1]), image_uuid=image_uuid)


def _vm_list(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db import vms

    def show(conn) -> None:
        _print_lines([{"uuid": vm.uuid, "hostname": vm.hostname, "dc": vm.dc, "node": vm.node, "status": vm.status,
                       "ostype": vm.ostype, "changed_at": _time(vm.changed_at), "replica_of": vm.replica_of,
                       "disks": [{"disk_id": d.disk_id, "size": d.size, "image_uuid": d.image_uuid}
                                 for d in vm.disks]} for vm in vms.list_vms(conn)])

    return _run(show)


def _vm_remove(args: argparse.Namespace) -> int:
    from imagesvc.shared.contracts.events import vm_uuid_problem
    from imagesvc.shared.db import accounts, vms
    from imagesvc.shared.db.models import utcnow

    problem = vm_uuid_problem(args.uuid)
    if problem:
        return _bad_argument(problem)

    def delete(conn) -> None:
        if vms.get_vm(conn, args.uuid) is None:
            raise accounts.NotFound(f"no VM {args.uuid!r}")
        if not vms.remove_vm(conn, args.uuid, utcnow()):
            raise ValueError(_newer_fact(args.uuid, "VM"))
        print(f"removed VM {args.uuid.lower()!r}")

    return _run(delete)


def _existing_vm(conn, key: str):
    """The live VM with this uuid or hostname. Raises NotFound."""
    from imagesvc.shared.db import accounts, vms

    vm = vms.get_vm(conn, key)
    if vm is None:
        raise accounts.NotFound(f"no VM {key!r}")
    return vm


def _snapshot_set(args: argparse.Namespace) -> int:
    from imagesvc.shared.contracts.events import snapshot_name_problem, status_problem
    from imagesvc.shared.db import vms
    from imagesvc.shared.db.models import utcnow

    problem = ("disk must be at least 1" if args.disk < 1 else None) or snapshot_name_problem(args.name) \
        or status_problem(args.status)
    if problem:
        return _bad_argument(problem)

    def write(conn) -> None:
        vm = _existing_vm(conn, args.vm)
        if vm.disk(args.disk) is None:
            raise ValueError(f"VM {vm.hostname!r} has no disk {args.disk}")
        record = vms.SnapshotRecord(vm_uuid=vm.uuid, disk_id=args.disk, name=args.name, status=args.status,
                                    changed_at=utcnow())
        if not vms.put_snapshot(conn, record):
            raise ValueError(_newer_fact(f"{vm.hostname}/disk {args.disk}/{args.name}", "snapshot"))
        print(f"snapshot {args.name!r} of VM {vm.hostname!r} disk {args.disk} is {args.status}")

    return _run(write)


def _snapshot_list(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import vms

    def show(conn) -> None:
        snapshots = vms.list_snapshots(conn, _existing_vm(conn, args.vm).uuid if args.vm else None)
        _print_lines([{"vm_uuid": s.vm_uuid, "disk_id": s.disk_id, "name": s.name, "status": s.status,
                       "changed_at": _time(s.changed_at)} for s in snapshots])

    return _run(show)


def _snapshot_remove(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts, vms
    from imagesvc.shared.db.models import utcnow

    def delete(conn) -> None:
        vm = _existing_vm(conn, args.vm)
        if vms.get_snapshot(conn, vm.uuid, args.disk, args.name) is None:
            raise accounts.NotFound(f"no snapshot {args.name!r} on disk {args.disk} of VM {vm.hostname!r}")
        if not vms.remove_snapshot(conn, vm.uuid, args.disk, args.name, utcnow()):
            raise ValueError(_newer_fact(f"{vm.hostname}/disk {args.disk}/{args.name}", "snapshot"))
        print(f"removed snapshot {args.name!r} of VM {vm.hostname!r} disk {args.disk}")

    return _run(delete)


def _time(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _newer_fact(key: str, kind: str = "node") -> str:
    return (f"a fact about {kind} {key!r} newer than this machine's clock is stored (its source's clock is "
            "ahead?); nothing changed")


def _bad_argument(problem: str) -> int:
    print(f"imagesvc: {problem}", file=sys.stderr)
    return 2


def _print_lines(rows: list[dict]) -> None:
    for row in rows:
        print(json.dumps(row, sort_keys=True))
