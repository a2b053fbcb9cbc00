"""The ``imagesvc`` command.

    imagesvc serve [--host H] [--port P]       everything in one process (memory:// + SQLite)
    imagesvc gateway [--host H] [--port P] [--workers N]
    imagesvc image-server [--host H] [--port P]   the image store, read-only, over HTTP (IMGAPI)
    imagesvc worker importer|updater|deleter|projector
    imagesvc node-agent --node HOSTNAME           the agent of one compute node (VM disk snapshots)
    imagesvc db upgrade
    imagesvc admin create-superadmin USERNAME [--new-key]
    imagesvc admin user|dc|role|node|vm ...     accounts, datacenters, roles, compute nodes, VMs (see imagesvc.admin)
    imagesvc dlq list [QUEUE] | replay QUEUE --id ID|--all | purge QUEUE --yes   dead letters (see imagesvc.dlq)
    imagesvc store check [--repair]             the image store against the catalogue (see imagesvc.store_check)
    imagesvc config show|record [--serve]       effective settings; the deployment's record (see imagesvc.config_cli)
    imagesvc health URL|local                   is a process ready

and, for users of the API (see imagesvc.client.cli and docs/sdk.md):

    imagesvc login | logout
    imagesvc image list|show|import|update|delete|wait|vms ...
    imagesvc task status|wait TASK_ID
    imagesvc events tail [--type PATTERN ...] [--dc DC ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import IO, Sequence

from imagesvc import admin as admin_module
from imagesvc import dlq as dlq_module
from imagesvc import store_check
from imagesvc import config_cli
from imagesvc.client import cli as user_cli
from imagesvc.settings import for_existing_database
from imagesvc.shared.config import ConfigError, Settings
from imagesvc.shared.logging import configure_logging, get_logger
from imagesvc.shared.store import open_store

log = get_logger("imagesvc")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"imagesvc: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a command-line tool answers with a sentence, not a traceback
        from sqlalchemy.exc import DBAPIError

        from imagesvc.shared.errors import Transient

        if not isinstance(exc, (Transient, DBAPIError)):
            raise
        print(f"imagesvc: the database is unreachable or not migrated (run `imagesvc db upgrade`): "
              f"{getattr(exc, 'orig', None) or exc}", file=sys.stderr)
        return 1


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Options with their defaults (where there is one to show); descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser shows its options' defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("imagesvc")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _environment_help() -> str:
    """The epilog of ``imagesvc --help``: every setting's variable and default."""
    import dataclasses

    lines = ["settings (environment variables, with their defaults; see README.md, Configuration):"]
    for field in dataclasses.fields(Settings):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        lines.append(f"  IMAGESVC_{field.name.upper()}={shown}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imagesvc", description="Server disk image service.", epilog=_environment_help())
    parser.add_argument("--version", action="version", version=f"imagesvc {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the whole system in this process (embedded mode)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="the port of the API and the image server")
    serve.set_defaults(func=_serve)

    gateway = commands.add_parser("gateway", help="run the HTTP gateway")
    gateway.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    gateway.add_argument("--port", type=int, default=8000, help="the port to listen on")
    gateway.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    gateway.set_defaults(func=_gateway)

    image_server = commands.add_parser("image-server", help="serve the image store read-only over HTTP (IMGAPI)")
    image_server.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    image_server.add_argument("--port", type=int, default=8080, help="the port to listen on")
    image_server.set_defaults(func=_image_server)

    worker = commands.add_parser("worker", help="run one consumer service")
    worker.add_argument("service", choices=["importer", "updater", "deleter", "projector"])
    worker.set_defaults(func=_worker)

    agent = commands.add_parser("node-agent", help="run the agent of one compute node (reads its VM disk snapshots)")
    agent.add_argument("--node", required=True, help="the node's hostname (its queue: node.<hostname>.commands)")
    agent.set_defaults(func=_node_agent)

    probe = commands.add_parser(
        "health", help="ask a process whether it is ready: exit code 0 if so, 1 if not or unreachable",
        description="TARGET: a URL (http://HOST:PORT, or with its path: /readyz, /healthz) or `local` for "
                    "http://$IMAGESVC_HEALTH_HOST:$IMAGESVC_HEALTH_PORT (a worker's or node agent's probes). "
                    "Without a path, /readyz is asked. Prints the answer.")
    probe.add_argument("target", help="a URL, or `local`")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    probe.set_defaults(func=_health)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply the Alembic migrations up to head").set_defaults(func=_db_upgrade)

    projector = commands.add_parser("projector", help="the read model")
    projector_commands = projector.add_subparsers(dest="projector_command", required=True)
    rebuild = projector_commands.add_parser(
        "rebuild", help="drop the read model and replay every stored event into it (refused while a projector runs)")
    rebuild.add_argument("--force", action="store_true",
                         help="rebuild without checking for running projectors (only when none can run)")
    rebuild.set_defaults(func=_projector_rebuild)

    admin = commands.add_parser("admin", help="accounts, datacenters, roles, compute nodes and VMs")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    superadmin = admin_commands.add_parser("create-superadmin", help="create a SuperAdmin; prints its API key last")
    superadmin.add_argument("username")
    superadmin.add_argument("--new-key", action="store_true", help="if the user exists, replace its API key")
    superadmin.set_defaults(func=_create_superadmin)
    admin_module.register(admin_commands)
    dlq_module.register(commands)
    store_check.register(commands)
    config_cli.register(commands)
    user_cli.register(commands)
    return parser


def _settings(**overrides: object) -> Settings:
    return Settings.from_env(os.environ, **overrides)


def _embedded_settings() -> Settings:
    """``serve``, and the commands that only work on a database: without a configured database
    they use the embedded mode's SQLite file."""
    return Settings.from_env(os.environ, embedded=True)


def _serve(args: argparse.Namespace) -> int:
    from imagesvc import bootstrap, edge
    from imagesvc.shared.db.migrate import upgrade

    settings = _embedded_settings()
    if not _can_listen("serve", args.host, args.port):
        return 1
    if settings.image_store != "none" and not settings.image_server_url:
        # The embedded image server answers on serve's own address.
        settings = Settings.from_env(os.environ, embedded=True, image_server_url=f"http://{args.host}:{args.port}")
    configure_logging("imagesvc", fmt=settings.log_format, level=settings.log_level)
    bootstrap.log_effective_settings("serve", settings)
    if settings.embedded_broker:
        lock = _lock_database(settings)  # held until the process ends
        if lock is None:
            return 2
    upgrade(settings.database_url)
    key_line = _first_run_superadmin(settings)
    infra = bootstrap.infrastructure(settings, purpose="embedded")
    try:
        bootstrap.agree_with_deployment(infra.engine, settings, process="serve", uses_store=True,
                                        server_url_configured="IMAGESVC_IMAGE_SERVER_URL" in os.environ)
    except BaseException:
        infra.close()
        raise
    embedded = bootstrap.Embedded(infra)
    embedded.start()
    embedded.wait_ready()
    store = open_store(settings.image_store, settings.s3_options())
    app = bootstrap.embedded_app(infra, store)
    base = f"http://{args.host}:{args.port}/api"
    print(f"imagesvc is running at {base} (database: {_redact(settings.database_url)}, broker: {_redact(settings.broker_url)})")
    if store is not None:
        print(f"The image server serves {store.location} at http://{args.host}:{args.port}/images")
    print(key_line)
    print(f"Try:  curl -H 'ES-API-KEY: <key>' {base}/image/")
    sys.stdout.flush()
    try:
        edge.run(app, settings=settings, host=args.host, port=args.port)
    finally:
        embedded.stop()
        infra.close()
    return 0


def _can_listen(command: str, host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on; if not, says why in one line."""
    from imagesvc import edge

    problem = edge.port_problem(host, port)
    if problem:
        print(f"imagesvc {command}: {problem}", file=sys.stderr)
    return problem is None


def _lock_database(settings: Settings) -> IO[str] | None:
    """Lock ``serve``'s database for as long as this process lives (``imagesvc.serve_lock``).
    Returns the open lock file (keep it open), or None, having said why, when another process
    holds the lock."""
    from imagesvc import serve_lock

    handle = serve_lock.take(settings)
    if handle is None:
        print(f"imagesvc serve: another imagesvc serve is running on this database "
              f"(it holds {serve_lock.lock_path(settings)})", file=sys.stderr)
    return handle


def _first_run_superadmin(settings: Settings) -> str:
    """Create ``admin`` on the first start and keep its key in ``<data_dir>/admin.key`` (mode 0600)."""
    from imagesvc.shared.db import accounts
    from imagesvc.shared.db.engine import make_engine, write_transaction
    from imagesvc.shared.keys import new_api_key

    key_file = Path(settings.data_dir).resolve() / "admin.key"
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with write_transaction(engine) as conn:
            if accounts.count_superadmins(conn) == 0:
                key = new_api_key()
                accounts.create_user(conn, "admin", api_key=key, is_superadmin=True)
                key_file.parent.mkdir(parents=True, exist_ok=True)
                key_file.write_text(key + "\n")
                key_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
                return (f"Created SuperAdmin 'admin'. Authenticate with the header  ES-API-KEY: {key}\n"
                        f"(the key is also in {key_file}; more users: imagesvc admin create-superadmin NAME)")
    finally:
        engine.dispose()
    if key_file.exists():
        return f"Authenticate with the header  ES-API-KEY: $(cat {key_file})"
    return "Authenticate with the ES-API-KEY header; create a key with: imagesvc admin create-superadmin NAME"


def _gateway(args: argparse.Namespace) -> int:
    from imagesvc import bootstrap, edge
    from imagesvc.shared.db.engine import make_engine

    settings = _settings()
    if not _can_listen("gateway", args.host, args.port):
        return 1
    configure_logging("gateway", fmt=settings.log_format, level=settings.log_level)
    bootstrap.log_effective_settings("gateway", settings)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        bootstrap.agree_with_deployment(engine, settings, process="gateway", uses_store=True)
    finally:
        engine.dispose()
    edge.run("imagesvc.bootstrap:gateway_app_from_env", factory=True, workers=args.workers, settings=settings,
             host=args.host, port=args.port)
    return 0


def _image_server(args: argparse.Namespace) -> int:
    from imagesvc import bootstrap, edge

    settings = _settings()
    store = open_store(settings.image_store, settings.s3_options())
    if store is None:
        print("imagesvc image-server: no image store is configured (IMAGESVC_IMAGE_STORE=none); "
              "set IMAGESVC_IMAGE_STORE to the store's directory", file=sys.stderr)
        return 2
    if not _can_listen("image-server", args.host, args.port):
        return 1
    configure_logging("image-server", fmt=settings.log_format, level=settings.log_level)
    bootstrap.log_effective_settings("image-server", settings)
    log.info("image_server.start", store=store.location, host=args.host, port=args.port)
    edge.run(bootstrap.image_server_app(store), settings=settings, host=args.host, port=args.port, image_server=True)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from imagesvc import bootstrap

    settings = _settings()
    configure_logging(args.service, fmt=settings.log_format, level=settings.log_level)
    bootstrap.log_effective_settings(args.service, settings)
    infra = bootstrap.infrastructure(settings, purpose=args.service)
    try:
        bootstrap.agree_with_deployment(infra.engine, settings, process=args.service,
                                        uses_store=args.service != "projector")
    except BaseException:
        infra.close()
        raise
    outbox = bootstrap.relay(infra)
    runner = bootstrap.consumer(infra, args.service, outbox)
    sweeper = bootstrap.lease_sweeper(infra, outbox) if args.service != "projector" else None

    def stop(_signum, _frame) -> None:
        runner.stop()
        outbox.stop()
        if sweeper is not None:
            sweeper.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        probes = bootstrap.health_server(infra, runner, store=args.service != "projector")
    except OSError as exc:
        print(f"imagesvc worker: IMAGESVC_HEALTH_PORT={settings.health_port}: cannot listen on "
              f"{settings.health_host}:{settings.health_port}: {exc.strerror or exc}", file=sys.stderr)
        infra.close()
        return 1
    if sweeper is not None:
        threading.Thread(target=outbox.run, name="relay", daemon=True).start()
        threading.Thread(target=sweeper.run, name="lease-sweeper", daemon=True).start()
    log.info("worker.start", service=args.service, broker=_redact(settings.broker_url),
             health=f"http://{settings.health_host}:{settings.health_port}" if probes else None)
    try:
        runner.run()
    finally:
        if probes is not None:
            probes.shutdown()
        infra.close()
    return 0


def _node_agent(args: argparse.Namespace) -> int:
    from imagesvc import bootstrap
    from imagesvc.shared.broker.topology import node_queue_name

    settings = _settings()
    try:
        queue = node_queue_name(args.node, settings.topology_prefix)
    except ValueError as exc:
        print(f"imagesvc node-agent: --node: {exc}", file=sys.stderr)
        return 2
    configure_logging("node-agent", fmt=settings.log_format, level=settings.log_level)
    bootstrap.log_effective_settings("node-agent", settings)
    infra = bootstrap.infrastructure(settings, purpose="node-agent")
    try:
        outbox = bootstrap.relay(infra)
        runner = bootstrap.node_agent(infra, args.node, outbox)
        bootstrap.agree_with_deployment(infra.engine, settings, process="node-agent", uses_store=True)
        sweeper = bootstrap.lease_sweeper(infra, outbox)
    except BaseException:
        infra.close()
        raise
    try:
        probes = bootstrap.health_server(infra, runner, store=True)
    except OSError as exc:
        print(f"imagesvc node-agent: IMAGESVC_HEALTH_PORT={settings.health_port}: cannot listen on "
              f"{settings.health_host}:{settings.health_port}: {exc.strerror or exc}", file=sys.stderr)
        infra.close()
        return 1

    def stop(_signum, _frame) -> None:
        runner.stop()
        outbox.stop()
        sweeper.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=outbox.run, name="relay", daemon=True).start()
    threading.Thread(target=sweeper.run, name="lease-sweeper", daemon=True).start()
    log.info("node_agent.start", node=args.node, queue=queue, store=settings.image_store,
             snapshots=settings.snapshot_driver, broker=_redact(settings.broker_url),
             health=f"http://{settings.health_host}:{settings.health_port}" if probes else None)
    try:
        runner.run()
    finally:
        if probes is not None:
            probes.shutdown()
        infra.close()
    return 0


def _health(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    import httpx

    target = args.target
    if target == "local":
        settings = _settings()
        if not settings.health_port:
            print("imagesvc health: IMAGESVC_HEALTH_PORT is not set (0): no local probes to ask", file=sys.stderr)
            return 1
        target = f"http://{settings.health_host}:{settings.health_port}"
    if "://" not in target:
        target = "http://" + target
    if urlsplit(target).path in ("", "/"):
        target = target.rstrip("/") + "/readyz"
    try:
        answer = httpx.get(target, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"imagesvc health: {target}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    print(answer.text)
    return 0 if answer.status_code == 200 else 1


def _db_upgrade(_args: argparse.Namespace) -> int:
    from imagesvc.shared.db.migrate import create_database_if_missing, upgrade

    settings = _embedded_settings()
    configure_logging("migrate", fmt=settings.log_format, level=settings.log_level)
    from sqlalchemy.exc import DBAPIError

    try:
        if create_database_if_missing(settings.database_url):
            print(f"created the database: {_redact(settings.database_url)}")
    except DBAPIError as exc:
        print(f"imagesvc db upgrade: could not make sure the database exists ({_redact(settings.database_url)}): "
              f"{exc.orig or exc}; create it (CREATE DATABASE) or give the user CREATEDB, then run this again",
              file=sys.stderr)
        return 1
    upgrade(settings.database_url)
    print(f"database at head: {_redact(settings.database_url)}")
    return 0


def _projector_rebuild(args: argparse.Namespace) -> int:
    from imagesvc.services.projector.handlers import rebuild
    from imagesvc.shared.db.engine import make_engine, write_transaction

    settings = for_existing_database()
    configure_logging("projector", fmt=settings.log_format, level=settings.log_level)
    running = None if args.force else _running_projectors(settings)
    if running:
        print(f"imagesvc projector rebuild: {running}; a rebuild beside a live projector would race it for the "
              "read model: stop it first (or pass --force when none can run)", file=sys.stderr)
        return 1
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with write_transaction(engine) as conn:
            replayed = rebuild(conn)
    finally:
        engine.dispose()
    print(f"read model rebuilt from {replayed} events")
    return 0


def _running_projectors(settings: Settings) -> str | None:
    """Who projects into this database now, in a sentence, or None for nobody: a ``serve`` on it
    (its lock), or consumers of the projector's queue on the configured broker. A broker that
    cannot be asked counts as someone: the rebuild cannot tell."""
    from imagesvc import serve_lock

    if serve_lock.held(settings):
        return "an imagesvc serve runs on this database (its projector with it)"
    if settings.embedded_broker:
        return None  # nothing outside a serve can consume memory://
    from imagesvc.shared.broker.connection import connect, discard, ensure_connected
    from imagesvc.shared.broker.topology import build_topology

    queue = build_topology(settings.topology_prefix).projector_queue.name  # type: ignore[union-attr]
    connection = connect(settings, "projector-rebuild")
    try:
        ensure_connected(connection, timeout=settings.publish_timeout)
        consumers = connection.default_channel.queue_declare(queue=queue, passive=True).consumer_count
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell"
        from amqp.exceptions import NotFound

        if isinstance(exc, NotFound):
            return None  # no projector ever ran on this broker
        return f"cannot ask the broker whether a projector consumes {queue} ({exc})"
    finally:
        discard(connection)
    return f"{consumers} projector(s) consume {queue}" if consumers else None


def _create_superadmin(args: argparse.Namespace) -> int:
    from imagesvc.shared.db import accounts
    from imagesvc.shared.db.engine import make_engine, write_transaction
    from imagesvc.shared.keys import new_api_key

    settings = for_existing_database()
    engine = make_engine(settings.database_url, pool_size=1)
    key = new_api_key()
    try:
        with write_transaction(engine) as conn:
            try:
                accounts.create_user(conn, args.username, api_key=key, is_superadmin=True)
                print(f"created SuperAdmin {args.username!r}; its API key (shown once):")
            except accounts.AccountExists:
                if not args.new_key:
                    print(f"imagesvc: user {args.username!r} exists (use --new-key to replace its key)",
                          file=sys.stderr)
                    return 1
                accounts.set_api_key(conn, args.username, key)
                print(f"replaced the API key of {args.username!r}; the new key (shown once):")
    finally:
        engine.dispose()
    print(key)
    return 0


def _redact(url: str) -> str:
    from imagesvc.shared.config import masked_url

    return masked_url(url)


if __name__ == "__main__":
    sys.exit(main())
