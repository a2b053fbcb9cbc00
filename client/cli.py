"""The user's half of the ``imagesvc`` command: the HTTP API and the event stream, on the SDK.

    imagesvc login [--username U] [--password-stdin]      a token, kept in the profile (mode 0600)
    imagesvc logout
    imagesvc image list|show|import|update|delete|snapshot|wait|vms ...
    imagesvc task status|wait TASK_ID
    imagesvc command publish TYPE --set FIELD=VALUE ... [--wait]   on the broker, as your broker user
    imagesvc events tail [--type T ...] [--dc DC ...]

Tables for people, ``--json`` for programs. Exit codes (``EXIT_*``): 0 done; 1 refused by the
API or the task failed; 2 usage or settings; 3 the service unreachable or failing (5xx,
transport); 4 gave up waiting (``--timeout``); 130 detached with Ctrl-C (the task goes on).
A command that starts a task follows it to its end with a progress line (bytes, rate, time
left) unless ``--detach`` is given; Ctrl-C stops following, never the task.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any, Callable, Iterable, Sequence, TextIO

from imagesvc.client import settings as client_settings
from imagesvc.client.progress import ProgressLine, human_bytes

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4
EXIT_DETACHED = 130

#: Image statuses of the API (1 ready, 2 being created or changed).
_STATUS_NAMES = {1: "ok", 2: "pending"}
_IMAGE_COLUMNS = (("name", "NAME"), ("version", "VERSION"), ("status", "STATUS"), ("access", "ACCESS"),
                  ("owner", "OWNER"), ("dc_bound", "DC_BOUND"), ("size", "SIZE"), ("created", "CREATED"))
_ACCESS_NAMES = {1: "public", 3: "private", 4: "deleted"}


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``login``, ``logout``, ``image``, ``task`` and ``events`` to the ``imagesvc`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", help="the profile to use (IMAGESVC_CLIENT_PROFILE; default: default)")
    common.add_argument("--url", help="the API's base URL (IMAGESVC_CLIENT_URL, or the profile's)")
    common.add_argument("--json", action="store_true", help="print JSON for programs instead of tables")
    following = argparse.ArgumentParser(add_help=False)
    following.add_argument("--detach", action="store_true", help="print the task id and return without following it")
    following.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds (exit 4)")

    login = commands.add_parser("login", parents=[common], help="log in; the token is kept in the profile (mode 0600)")
    login.add_argument("--username", help="default: asked for on the terminal")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.set_defaults(func=_guarded(_login))
    logout = commands.add_parser("logout", parents=[common], help="end the profile's token and forget it")
    logout.set_defaults(func=_guarded(_logout))

    image = commands.add_parser("image", help="images through the HTTP API (as a user; see `imagesvc login`)")
    images = image.add_subparsers(dest="image_command", required=True)
    listing = images.add_parser("list", parents=[common], help="the images you may see")
    listing.add_argument("--dc", help="a datacenter's images (default: your current datacenter's)")
    listing.add_argument("--order-by", help="name or created; prefix - for descending (--order-by=-created)")
    listing.add_argument("--limit", type=int, help="one page of at most this many images (1..1000); with --all, "
                                                   "the page size (default 100)")
    listing.add_argument("--marker", help="the page after this image (the name the previous page ended with)")
    listing.add_argument("--marker-created", help="with --marker in an order by created: the marker's creation "
                                                  "time as the previous page printed it (the marker then need not "
                                                  "exist any more)")
    listing.add_argument("--all", action="store_true", help="every image, read page by page")
    listing.add_argument("--status", help="ok or pending")
    listing.add_argument("--name", help="names beginning with this (any case)")
    listing.add_argument("--ostype", help="1 Linux, 2 SunOS, 3 BSD, 4 Windows, 5 SunOS zone, 6 Linux zone")
    listing.add_argument("--owner", help="the owner's username")
    listing.add_argument("--tag", action="append", help="images with this tag; repeatable (every tag)")
    listing.add_argument("--attached-to", metavar="DC", help="images attached to this datacenter")
    listing.add_argument("--access", help="public, private or deleted")
    listing.set_defaults(func=_guarded(_image_list))
    show = images.add_parser("show", parents=[common], help="one image")
    show.add_argument("name")
    show.add_argument("--dc")
    show.set_defaults(func=_guarded(_image_show))
    create = images.add_parser("import", parents=[common, following],
                               help="import an image from a manifest URL, following its progress")
    create.add_argument("name")
    create.add_argument("manifest_url")
    create.add_argument("--file-url", help="where the image file is, if not beside the manifest")
    create.add_argument("--dc", help="the datacenter to bind the image to (needed unless --set dc_bound=false makes it global)")
    create.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=VALUE",
                        help="an image field (alias, version, access, owner, desc, resize, deploy, tags, dc_bound); "
                             "VALUE is JSON where it parses as JSON, else text; repeatable")
    create.set_defaults(func=_guarded(_image_import))
    change = images.add_parser("update", parents=[common, following], help="change an image's fields")
    change.add_argument("name")
    change.add_argument("--dc")
    change.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=VALUE", required=True,
                        help="a field to change; VALUE is JSON where it parses as JSON, else text; repeatable")
    change.set_defaults(func=_guarded(_image_update))
    remove = images.add_parser("delete", parents=[common, following], help="delete an image")
    remove.add_argument("name")
    remove.add_argument("--dc")
    remove.set_defaults(func=_guarded(_image_delete))
    snapshot = images.add_parser("snapshot", parents=[common, following],
                                 help="make an image from a VM disk snapshot, following the export's progress")
    snapshot.add_argument("vm", help="the VM's hostname or uuid")
    snapshot.add_argument("snapname", help="the snapshot's name")
    snapshot.add_argument("name", help="the new image's name")
    snapshot.add_argument("--dc")
    snapshot.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=VALUE",
                          help="disk_id (default 1) and the image fields of import; repeatable")
    snapshot.set_defaults(func=_guarded(_image_snapshot))
    wait = images.add_parser("wait", parents=[common], help="wait until an image is ready (status ok)")
    wait.add_argument("name")
    wait.add_argument("--dc")
    wait.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 4)")
    wait.set_defaults(func=_guarded(_image_wait))
    vms = images.add_parser("vms", parents=[common], help="the VMs that use an image")
    vms.add_argument("name")
    vms.set_defaults(func=_guarded(_image_vms))

    task = commands.add_parser("task", help="tasks through the HTTP API")
    tasks = task.add_subparsers(dest="task_command", required=True)
    status = tasks.add_parser("status", parents=[common], help="a task's state, result and progress")
    status.add_argument("task_id")
    status.set_defaults(func=_guarded(_task_status))
    follow = tasks.add_parser("wait", parents=[common], help="follow a task to its end with a progress line")
    follow.add_argument("task_id")
    follow.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 4)")
    follow.set_defaults(func=_guarded(_task_wait), detach=False)

    broker_options = argparse.ArgumentParser(add_help=False)
    broker_options.add_argument("--broker-url", help="your broker user's URL (IMAGESVC_CLIENT_BROKER_URL, or the profile's)")
    broker_options.add_argument("--prefix", default="", help="the deployment's topology prefix (IMAGESVC_TOPOLOGY_PREFIX)")
    broker_options.add_argument("--service-user", dest="service_users", action="append", default=[], metavar="USER",
                                help="a broker user whose events are believed: imagesvc's IMAGESVC_SERVICE_USERS; "
                                     "repeatable (default: imagesvc)")

    command = commands.add_parser("command", help="commands published on the broker as your broker user")
    command_commands = command.add_subparsers(dest="command_command", required=True)
    publish = command_commands.add_parser("publish", parents=[common, broker_options],
                                          help="publish a command (confirmed); --wait for its outcome event")
    publish.add_argument("type", help="the command type: image.import, image.update, image.delete, ...")
    publish.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=VALUE",
                         help="a payload field (docs/messages.md); VALUE is JSON where it parses as JSON; repeatable")
    publish.add_argument("--dc", help="the datacenter you act in (the envelope's actor.dc)")
    publish.add_argument("--node", help="the compute node a node command goes to (image.snapshot)")
    publish.add_argument("--task-id", help="a task id of your own (default: a new UUID); the same id and "
                                           "payload again are the same command")
    publish.add_argument("--wait", action="store_true", help="wait for the task's outcome event")
    publish.add_argument("--timeout", type=float, default=60.0, help="how long --wait waits (exit 4)")
    publish.set_defaults(func=_guarded(_command_publish))

    events = commands.add_parser("events", help="image lifecycle events from the broker")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    tail = event_commands.add_parser("tail", parents=[common, broker_options],
                                     help="print events as they happen (Ctrl-C ends)")
    tail.add_argument("--type", dest="types", action="append", default=[], metavar="PATTERN",
                      help="event types or patterns (image.#, task.succeeded, ...); repeatable; default: all")
    tail.add_argument("--dc", dest="dcs", action="append", default=[], metavar="DC",
                      help="only this datacenter's events (and the global ones); repeatable")
    tail.add_argument("--count", type=int, default=None, help="stop after this many events")
    tail.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without an event")
    tail.set_defaults(func=_guarded(_events_tail))


# --- running a command ------------------------------------------------------------------------


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the SDK's exceptions into a sentence on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from imagesvc.client import ApiError, ImagesvcError, TransportError

        try:
            return command(args)
        except (client_settings.ProfileError, UsageError) as exc:
            print(f"imagesvc: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ApiError as exc:
            _print_refusal(exc, sys.stderr)
            return EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_REFUSED
        except TransportError as exc:
            print(f"imagesvc: the service cannot be reached: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except TimeoutError as exc:
            print(f"imagesvc: gave up waiting: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        except ImagesvcError as exc:  # the broker's: unreachable, refused, not confirmed
            print(f"imagesvc: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except ValueError as exc:  # a URL or a name the SDK refuses before sending anything
            print(f"imagesvc: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (KeyboardInterrupt, EOFError):
            # Before a task was started (or while not following one): nothing was left running.
            print(file=sys.stderr)
            return EXIT_DETACHED

    return run


def _print_refusal(exc, stream: TextIO) -> None:
    head = f"imagesvc: refused ({exc.status})"
    if exc.detail:
        head += f": {exc.detail}"
    if exc.code:
        head += f" [{exc.code}]"
    print(head, file=stream)
    for field, messages in (exc.field_errors or {}).items():
        for message in messages:
            print(f"  {field}: {message}", file=stream)
    if exc.task_id:
        print(f"  task: {exc.task_id}", file=stream)


def _settings(args: argparse.Namespace) -> client_settings.ClientSettings:
    return client_settings.resolve(profile=args.profile, url=args.url, broker_url=getattr(args, "broker_url", None))


def _client(args: argparse.Namespace):
    from imagesvc.client import Client

    chosen = _settings(args)
    return Client(chosen.url, **chosen.credentials())


class UsageError(Exception):
    """The command line asks for something that cannot be sent (exit 2)."""


#: Names that are the command's own arguments, not fields of the image: ``--dc``, the positional
#: name and URLs, and what the SDK's methods take as options.
_NOT_FIELDS = frozenset({"name", "dc", "manifest_url", "file_url", "idempotency_key", "if_match", "vm", "snapname"})


def _pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs; VALUE is JSON when it parses as JSON (3, true, ["a"]), else text."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--set wants FIELD=VALUE, not {pair!r}")
        try:
            fields[name] = json.loads(raw)
        except ValueError:
            fields[name] = raw
    return fields


def _fields(pairs: Iterable[str]) -> dict[str, Any]:
    """An image's fields from ``FIELD=VALUE`` pairs (``_pairs``), refusing the command's own arguments."""
    fields = _pairs(pairs)
    for name in fields:
        if name in _NOT_FIELDS:
            raise UsageError(f"--set {name}=... is not an image field: give it as the command's "
                             f"{'--' + name.replace('_', '-') if name in ('dc', 'file_url') else 'argument'}")
    return fields


def _print_json(value: Any, stream: TextIO = sys.stdout) -> None:
    stream.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def key_values(rows: Sequence[Sequence[str]]) -> str:
    """``key  value`` lines, the values aligned."""
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "status":
        return _STATUS_NAMES.get(value, str(value))
    if field == "access":
        return _ACCESS_NAMES.get(value, str(value))
    if field == "size" and isinstance(value, int):
        return human_bytes(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _image_rows(images: Iterable[Any]) -> list[list[str]]:
    return [[_cell(field, image.raw.get(field)) for field, _ in _IMAGE_COLUMNS] for image in images]


# --- commands -----------------------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    from imagesvc.client import Client

    chosen = _settings(args)
    username = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    with Client(chosen.url) as client:
        token = client.login(username, password)
    path = client_settings.save(chosen.profile, {"url": chosen.url, "token": token})
    if args.json:
        _print_json({"profile": chosen.profile, "url": chosen.url, "config": str(path)})
    else:
        print(f"Logged in to {chosen.url} as {username}; the token is kept in {path} (profile {chosen.profile}).")
    return EXIT_OK


def _logout(args: argparse.Namespace) -> int:
    chosen = _settings(args)
    try:
        if chosen.token:
            with _client(args) as client:
                client.logout()
    finally:
        # Forgotten whatever the server said: an expired or revoked token is refused by logout too.
        client_settings.save(chosen.profile, {"token": None})
    if not args.json:
        print("Logged out." if chosen.token else "No token was kept for this profile.")
    return EXIT_OK


def _image_list(args: argparse.Namespace) -> int:
    """The whole list in one answer; with ``--limit``/``--marker`` one page (the marker of the
    next one on standard error, or in the JSON); with ``--all`` every page, one after another."""
    filters = {"status": args.status, "name": args.name, "ostype": args.ostype, "owner": args.owner,
               "tag": args.tag, "attached_to": args.attached_to, "access": args.access}
    filters = {key: value for key, value in filters.items() if value is not None}
    next_marker = next_created = None
    paged = args.limit is not None or args.marker is not None
    size = args.limit if args.limit is not None else 100
    with _client(args) as client:
        if args.all:
            images = list(client.iter_images(page_size=size, marker=args.marker, marker_created=args.marker_created,
                                             full=True, order_by=args.order_by, datacenter=args.dc, **filters))
        elif paged:
            page = client.images(limit=size, marker=args.marker, marker_created=args.marker_created, full=True,
                                 order_by=args.order_by, datacenter=args.dc, **filters)
            images, next_marker, next_created = page.items, page.next_marker, page.next_marker_created
        else:
            images = client.list_images(dc=args.dc, full=True, order_by=args.order_by, **filters)
    if args.json:
        raw = [image.raw for image in images]
        _print_json({"images": raw, "next_marker": next_marker, "next_marker_created": next_created}
                    if paged and not args.all else raw)
    else:
        print(table(_image_rows(images), [header for _, header in _IMAGE_COLUMNS]))
        if next_marker is not None:
            more = f"--marker {next_marker}" + (f" --marker-created {next_created}" if next_created else "")
            print(f"More images follow: add {more}", file=sys.stderr)
    return EXIT_OK


def _image_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        image = client.get_image(args.name, dc=args.dc)
    if args.json:
        _print_json(image.raw)
    else:
        print(key_values([[key, _cell(key, value)] for key, value in image.raw.items()]))
    return EXIT_OK


def _image_import(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.import_image(args.name, args.manifest_url, file_url=args.file_url, dc=args.dc,
                                   **_fields(args.fields))
        return _follow(client, task, args, label=f"importing {args.name}")


def _image_update(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.update_image(args.name, dc=args.dc, **_fields(args.fields))
        return _follow(client, task, args, label=f"updating {args.name}")


def _image_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.delete_image(args.name, dc=args.dc)
        return _follow(client, task, args, label=f"deleting {args.name}")


def _image_snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.snapshot_image(args.vm, args.snapname, args.name, dc=args.dc, **_fields(args.fields))
        return _follow(client, task, args, label=f"exporting {args.vm}@{args.snapname}")


def _image_wait(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with _client(args) as client:
        while True:
            image = client.get_image(args.name, dc=args.dc)
            if image.raw.get("status") == 1:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"image {args.name} is still {_cell('status', image.raw.get('status'))}")
            time.sleep(0.5)
    if args.json:
        _print_json(image.raw)
    else:
        print(f"{args.name} is ready.")
    return EXIT_OK


def _image_vms(args: argparse.Namespace) -> int:
    with _client(args) as client:
        vms = client.image_vms(args.name)
    if args.json:
        _print_json(vms)
    else:
        rows = [[_cell("", vm.get(key)) for key in ("hostname", "uuid", "alias", "dc")] if isinstance(vm, dict)
                else [str(vm), "-", "-", "-"] for vm in vms]
        print(table(rows, ["HOSTNAME", "UUID", "ALIAS", "DC"]))
    return EXIT_OK


def _task_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.task(args.task_id)
    _print_task(task, args)
    return _task_exit(task)


def _task_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, client.task(args.task_id), args, label=f"task {args.task_id}")


def _broker(args: argparse.Namespace, what: str):
    from imagesvc.client.broker import Broker

    chosen = _settings(args)
    if not chosen.broker_url:
        raise UsageError(f"{what} needs your broker user's URL: --broker-url, IMAGESVC_CLIENT_BROKER_URL "
                         "or the profile's broker_url")
    return Broker(chosen.broker_url, prefix=args.prefix, service_users=args.service_users or ("imagesvc",))


def _command_publish(args: argparse.Namespace) -> int:
    from imagesvc.shared.contracts import COMMAND_TYPES, TaskSucceeded
    from imagesvc.shared.errors import PoisonMessage

    kind = COMMAND_TYPES.get(args.type)
    if kind is None:
        raise UsageError(f"{args.type!r} is not a command type; one of: {', '.join(sorted(COMMAND_TYPES))}")
    try:
        command = kind.from_payload(_pairs(args.fields))
    except PoisonMessage as bad:
        raise UsageError(bad.reason) from None
    with _broker(args, "command publish") as broker:
        if not args.wait:
            task_id = broker.publish(command, dc=args.dc, task_id=args.task_id, node=args.node)
            if args.json:
                _print_json({"task_id": task_id})
            else:
                print(f"published; task {task_id} (its outcome: imagesvc task status {task_id})")
            return EXIT_OK
        outcome = broker.publish_and_wait(command, dc=args.dc, task_id=args.task_id, node=args.node,
                                          timeout=args.timeout)
    payload = outcome.to_payload()
    if args.json:
        _print_json({"type": type(outcome).TYPE, **payload})
    else:
        print(key_values([["task", payload["task_id"]], ["outcome", type(outcome).TYPE],
                          ["http_code", str(payload.get("http_code"))],
                          *([["code", str(payload["code"])]] if payload.get("code") else []),
                          ["result", json.dumps(payload.get("result"), default=str)]]))
    if isinstance(outcome, TaskSucceeded):
        return EXIT_OK
    return EXIT_UNAVAILABLE if (payload.get("http_code") or 0) >= 500 else EXIT_REFUSED


def _events_tail(args: argparse.Namespace) -> int:
    seen = 0
    try:
        with _broker(args, "events tail") as broker:
            with broker.subscribe(args.types or ["#"], args.dcs or None, timeout=args.idle_timeout) as events:
                # The queue is bound now: what happens from here on is printed.
                print(f"listening on {', '.join(events.bindings)} (Ctrl-C ends)", file=sys.stderr, flush=True)
                for received in events:
                    _print_event(received, args)
                    received.ack()
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return EXIT_OK


def _print_event(received, args: argparse.Namespace) -> None:
    envelope = received.envelope
    if args.json:
        print(json.dumps({"routing_key": received.routing_key, "type": envelope.type, "id": envelope.id,
                          "time": envelope.time, "correlation_id": envelope.correlation_id,
                          "payload": received.event.to_payload()}, default=str), flush=True)
        return
    payload = received.event.to_payload()
    subject = (payload.get("image") or {}).get("name") if isinstance(payload.get("image"), dict) else None
    subject = subject or payload.get("object_name") or payload.get("hostname") or payload.get("uuid") or ""
    extra = ""
    if envelope.type == "task.progress":
        extra = f" {human_bytes(payload.get('done') or 0)}" + (f"/{human_bytes(payload['total'])}" if payload.get("total") else "")
    elif envelope.type in ("task.succeeded", "task.failed"):
        extra = f" {payload.get('http_code')}" + (f" {payload['code']}" if payload.get("code") else "")
    print(f"{envelope.time}  {envelope.type:<20} {subject}  task {envelope.correlation_id}{extra}", flush=True)


# --- following a task -------------------------------------------------------------------------


def _follow(client, task, args: argparse.Namespace, *, label: str) -> int:
    """Follow ``task`` to its end with a progress line on stderr, print its outcome, return the
    exit code. ``--detach`` (or Ctrl-C while following) leaves it running."""
    from imagesvc.client import TaskFailed

    if not task.done and args.detach:
        if args.json:
            _print_json({"task_id": task.task_id, "status": task.status})
        else:
            print(f"task {task.task_id} is {task.status}; follow it with: imagesvc task wait {task.task_id}")
        return EXIT_OK
    if not task.done:
        line = ProgressLine(label, sys.stderr, interactive=sys.stderr.isatty())

        def on_progress(current) -> None:
            if current.progress is not None:
                line.update(current.progress.done, current.progress.total)

        try:
            task = client.wait(task, timeout=args.timeout, on_progress=on_progress)
        except TaskFailed as failed:
            line.finish()
            task = failed.task
        except KeyboardInterrupt:
            line.finish()
            print(f"detached: task {task.task_id} goes on; follow it with: imagesvc task wait {task.task_id}",
                  file=sys.stderr)
            return EXIT_DETACHED
        else:
            line.finish()
    _print_task(task, args)
    return _task_exit(task)


def _print_task(task, args: argparse.Namespace) -> None:
    if args.json:
        body = {"task_id": task.task_id, "status": task.status, "result": task.result}
        if task.progress is not None:
            body["progress"] = {"done": task.progress.done, "total": task.progress.total}
        _print_json(body)
        return
    rows = [["task", task.task_id], ["status", task.status]]
    if task.progress is not None and not task.done:
        total = f" / {human_bytes(task.progress.total)}" if task.progress.total else ""
        rows.append(["progress", human_bytes(task.progress.done) + total])
    result = task.result
    if isinstance(result, dict) and task.succeeded and "name" in result:
        rows.append(["image", f"{result.get('name')} ({_cell('status', result.get('status'))})"])
    elif result is not None:
        rows.append(["result", json.dumps(result, default=str)])
    print(key_values(rows))


def _task_exit(task) -> int:
    if not task.done or task.succeeded:
        return EXIT_OK
    return EXIT_UNAVAILABLE if (task.http_code or 0) >= 500 else EXIT_REFUSED
