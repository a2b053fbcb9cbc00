"""The composition root: the one place that wires services to infrastructure.

``Infrastructure`` holds what a process shares (engine, topology, publisher, connection
factory). ``consumer(...)`` builds the runner of one consumer service, ``node_agent(...)`` that of
one compute node's agent, ``gateway_app(...)`` the ASGI app, ``image_server_app(...)`` the image
server's; ``Embedded`` runs them all in one process (threads over ``memory://`` and SQLite; the
node agent of ``IMAGESVC_LOCAL_NODE`` when set), ``embedded_app(...)`` serves both apps on one port.
Nothing here decides anything.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Callable

from kombu import Connection
from sqlalchemy import Engine

from imagesvc.domain.creation import CREATION_LEASE_SECONDS
from imagesvc.domain.repositories import local_repository
from imagesvc.services.deleter.handlers import delete_image
from imagesvc.services.importer.handlers import abandon_import, import_image
from imagesvc.services.importer.repositories import refresh_repositories
from imagesvc.services.importer.transfer import Limits
from imagesvc.services.node_agent.handlers import abandon_snapshot_image, create_image_from_snapshot
from imagesvc.services.projector import handlers as projection
from imagesvc.services.sweeper.leases import LeaseSweeper
from imagesvc.services.sweeper.recovery import Recovered, StartupRecovery
from imagesvc.services.updater.handlers import attach_image, detach_image, update_image
from imagesvc.shared.broker.connection import broker_identity, connect
from imagesvc.shared.broker.consumer import ConsumerRunner
from imagesvc.shared.broker.notifications import TaskNotifier
from imagesvc.shared.broker.publisher import Publisher
from imagesvc.shared.broker.topology import QueueLimits, Topology, build_topology
from imagesvc.shared import deployment, health, metrics
from imagesvc.shared.config import FROM_ENVIRONMENT, ConfigError, Settings
from imagesvc.shared.config import effective as effective_settings
from imagesvc.shared.config import sources as config_sources
from imagesvc.shared.db.engine import make_engine
from imagesvc.shared.db.migrate import head_revision
from imagesvc.shared.handling import CommandConsumer, CommandHandler, EventConsumer
from imagesvc.shared.logging import get_logger
from imagesvc.shared.net.fetch import Fetcher, UrlPolicy
from imagesvc.shared.relay import OutboxRelay
from imagesvc.shared.snapshots import SnapshotDriver, open_driver
from imagesvc.shared.store import ImageStore, open_store
from imagesvc.shared.store.server import ImageServer
from imagesvc.shared.user_slots import UserSlots

log = get_logger(__name__)

CONSUMERS = ("importer", "updater", "deleter", "projector")
#: A node agent's exports are CPU-bound (gzip): at most this many at once per node; further
#: commands wait in the node's queue, where a restart of the agent does not lose them.
NODE_AGENT_CONCURRENCY = 2
#: The commands that hold a worker thread for as long as an origin or a disk makes them last (a
#: download, an export): each consumer runs only so many of one user's at once
#: (``IMAGESVC_LONG_COMMANDS_PER_USER``) and defers the rest, so one user cannot take every thread.
LONG_RUNNING_COMMANDS = ("image.import", "image.snapshot")


@dataclass
class Infrastructure:
    settings: Settings
    engine: Engine
    topology: Topology
    publisher: Publisher
    connect: Callable[[str], Connection]

    def close(self) -> None:
        self.publisher.close()
        self.engine.dispose()


def infrastructure(settings: Settings, *, purpose: str) -> Infrastructure:
    # The gateway only reads and journals, one statement at a time (its journal rows may be
    # lost in a database crash without harm); every other process commits durably.
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                         relaxed_durability=purpose == "gateway", single_statements=purpose == "gateway")
    topology = build_topology(settings.topology_prefix, quorum=not settings.embedded_broker,
                              limits=queue_limits(settings))

    def connection_for(role: str) -> Connection:
        return connect(settings, f"{purpose}-{role}")

    publisher = Publisher(lambda: connection_for("publisher"), size=max(4, settings.worker_threads),
                          timeout=settings.publish_timeout, heartbeat=0 if settings.embedded_broker else settings.heartbeat)
    metrics.configure(enabled=settings.metrics == "on")
    return Infrastructure(settings, engine, topology, publisher, connection_for)


def agree_with_deployment(engine, settings: Settings, *, process: str, uses_store: bool,
                          server_url_configured: bool = True) -> None:
    """Check this process's settings against its deployment's record (``shared.deployment``),
    recording what is not recorded yet. Raises ConfigError (a DeploymentMismatch says which
    setting, both values and the fix)."""
    facts = deployment.check(engine, settings, process=process, uses_store=uses_store,
                             server_url_configured=server_url_configured)
    log.info("deployment.agreed", process=process, **{fact.name: fact.shown for fact in facts})


def log_effective_settings(process: str, settings: Settings) -> None:
    """One line with every setting of this process (secrets masked) and those set by the
    environment: what it actually runs with."""
    from_environment = sorted(var for var, source in config_sources(settings, os.environ).items()
                              if source == FROM_ENVIRONMENT)
    log.info("config.effective", process=process, settings=effective_settings(settings),
             from_environment=from_environment)


def queue_limits(settings: Settings) -> QueueLimits:
    return QueueLimits(queue=settings.queue_max_length, dead_letters=settings.dead_letter_max_length)


def configured_image_server(settings: Settings) -> ImageServer | None:
    """The configured image server, or None for database-level operations."""
    store = open_store(settings.image_store, settings.s3_options())
    if store is None:
        return None
    return ImageServer(store, url=settings.image_server_url, node=settings.image_server_node)


def health_server(infra: Infrastructure, runner: ConsumerRunner, *, store: bool):
    """Serve a worker's or node agent's ``/healthz`` and ``/readyz`` on ``IMAGESVC_HEALTH_PORT``
    (None when it is 0). Ready: the database at the migrations' head, the broker reachable, the
    image store (``store``: when the process writes one) usable, the consume loop consuming.
    Raises OSError when the port cannot be bound."""
    settings = infra.settings
    if not settings.health_port:
        return None
    checks = {"database": health.database_check(infra.engine, head_revision()),
              "broker": health.broker_check(lambda: infra.connect("health"), settings.publish_timeout)}
    image_store = open_store(settings.image_store, settings.s3_options()) if store else None
    if image_store is not None:
        checks["store"] = health.store_check(image_store)
    checks["consumer"] = health.flag_check(runner.ready, "not consuming its queue (the broker connection is down "
                                                         "or being restored)")
    # ``/metrics`` beside them: this process's own metrics (its commands, transfers, sweeper).
    own_metrics = (lambda: (metrics.exposition(), metrics.CONTENT_TYPE)) if settings.metrics == "on" else None
    return health.serve_in_thread(health.Readiness(checks), settings.health_host, settings.health_port,
                                  metrics=own_metrics)


def system_metrics(infra: Infrastructure) -> metrics.SystemMetrics:
    """The gauges the gateway's (and ``serve``'s) ``/metrics`` computes at scrape time: outbox
    lag and leases from the database, and on RabbitMQ the depth of every dead-letter queue (the
    services' and those of the compute nodes the database knows)."""
    settings = infra.settings
    dead_letters = None
    if not settings.embedded_broker:
        def names() -> list[str]:
            from imagesvc.shared.broker.topology import node_queue_name
            from imagesvc.shared.db import nodes
            from imagesvc.shared.db.engine import read_transaction

            found = {queue.name for queue in infra.topology.dead_letter_queues.values()}
            with read_transaction(infra.engine) as conn:
                for node in nodes.list_all(conn):
                    try:
                        found.add(node_queue_name(node.hostname, settings.topology_prefix) + ".dlq")
                    except ValueError:
                        continue
            return sorted(found)

        dead_letters = metrics.DeadLetterDepths(lambda: infra.connect("metrics"), names,
                                                timeout=settings.publish_timeout)
    return metrics.SystemMetrics(engine=infra.engine, dead_letters=dead_letters)


def download_limits(settings: Settings) -> Limits:
    return Limits(max_bytes=settings.max_image_bytes, connect_timeout=settings.download_connect_timeout,
                  idle_timeout=settings.download_idle_timeout, total_timeout=settings.download_timeout)


def user_slots(settings: Settings, threads: int) -> UserSlots:
    """The cap of a consumer with ``threads`` handler threads: by default half of them, so other
    users' commands always find a free thread."""
    return UserSlots(settings.long_commands_per_user or max(1, threads // 2), LONG_RUNNING_COMMANDS)


def relay(infra: Infrastructure) -> OutboxRelay:
    identity = broker_identity(infra.settings)
    return OutboxRelay(infra.engine, infra.publisher, infra.topology, user_id=identity.own if identity else None)


def lease_sweeper(infra: Infrastructure, outbox: OutboxRelay) -> LeaseSweeper:
    """The lease sweeper every command-consumer process runs beside its consumer (see
    docs/architecture.md: any surviving consumer process ends the tasks of a dead one)."""
    settings = infra.settings
    server = configured_image_server(settings)
    return LeaseSweeper(infra.engine, outbox, server.store if server else None, period=settings.sweep_seconds,
                        serves=server.serves if server else None)


def consumer(infra: Infrastructure, service: str, outbox: OutboxRelay | None = None) -> ConsumerRunner:
    """The runner of one consumer service (importer, updater, deleter or projector)."""
    settings = infra.settings
    identity = broker_identity(settings)
    if service == "projector":
        # Notifications are transient hints (gateways also poll): no confirms, no durability.
        notifier = TaskNotifier(Publisher(lambda: connect(settings, f"{service}-notify"), size=2,
                                          timeout=settings.publish_timeout, confirms=False,
                                          heartbeat=0 if settings.embedded_broker else settings.heartbeat),
                                infra.topology, user_id=identity.own if identity else None)
        handler = EventConsumer(name="projector", engine=infra.engine, apply=projection.apply,
                                notify=lambda note: notifier(note.reply_to, note.to_dict()),
                                publishers=identity.publishers() if identity else None,
                                max_message_bytes=settings.max_message_bytes)
        prefetch = max(settings.prefetch, 32)
    else:
        server = configured_image_server(settings)
        fetcher = Fetcher(UrlPolicy(settings.fetch_allow))
        lease = settings.lease_seconds or None
        routes = {
            "importer": {
                "image.import": functools.partial(import_image, fetcher=fetcher, server=server,
                                                  limits=download_limits(settings), lease_seconds=lease,
                                                  fetch_timeout=settings.fetch_timeout),
                "imagestore.refresh": functools.partial(
                    refresh_repositories, fetcher=fetcher, configured=settings.repositories(),
                    local=local_repository(settings.image_server_url)),
            },
            "updater": {"image.update": functools.partial(update_image, server=server, lease_seconds=lease),
                        "image.attach": attach_image,
                        "image.detach": detach_image},
            "deleter": {"image.delete": functools.partial(delete_image, server=server, lease_seconds=lease)},
        }[service]
        # With an image store the updater and the deleter commit the image PENDING before their
        # final transaction: a command handled already must not get that far again.
        handler = CommandConsumer(name=service, engine=infra.engine, relay=outbox or relay(infra), routes=routes,
                                  check_first=service == "importer" or server is not None,
                                  trusted_publishers=identity.services if identity else None,
                                  compensations={"image.import": functools.partial(abandon_import, server=server)}
                                  if service == "importer" else None, max_message_bytes=settings.max_message_bytes,
                                  slots=user_slots(settings, settings.worker_threads),
                                  claim_seconds=settings.claim_seconds, max_runs=settings.max_attempts)
        prefetch = settings.prefetch
    return ConsumerRunner(
        name=service,
        connect=lambda: infra.connect(service),
        queue=infra.topology.work_queue(service),
        topology=infra.topology,
        handler=handler,
        publisher=infra.publisher,
        prefetch=prefetch,
        threads=settings.worker_threads,
        max_attempts=settings.max_attempts,
        backoff=settings.retry_backoff,
        outage_backoff=settings.outage_backoff,
        identity=identity,
    )


def snapshot_driver(settings: Settings) -> SnapshotDriver:
    """The snapshot driver the settings name (``IMAGESVC_SNAPSHOT_DRIVER``); raises ConfigError
    when it cannot be built (the file driver without ``IMAGESVC_SNAPSHOT_DIR``)."""
    try:
        return open_driver(settings.snapshot_driver, directory=settings.snapshot_dir,
                           zfs_command=settings.zfs_command, zfs_dataset=settings.zfs_dataset)
    except ValueError as exc:
        raise ConfigError(f"IMAGESVC_SNAPSHOT_DRIVER={settings.snapshot_driver}: {exc}") from None


def node_agent_routes(settings: Settings, driver: SnapshotDriver, hostname: str) -> dict[str, CommandHandler]:
    """The node agent's handlers by command type: the types of ``topology.NODE_COMMAND_TYPES``
    (its queue is bound with exactly those)."""
    return {"image.snapshot": functools.partial(create_image_from_snapshot, node=hostname, driver=driver,
                                                server=configured_image_server(settings),
                                                level=settings.snapshot_gzip_level,
                                                lease_seconds=settings.lease_seconds or None)}


def node_agent(infra: Infrastructure, hostname: str, outbox: OutboxRelay | None = None) -> ConsumerRunner:
    """The runner of the node agent of ``hostname``: consumes ``<prefix>node.<hostname>.commands``
    (declared with its dead-letter queue on every connect). Raises ConfigError without an image
    store or a usable snapshot driver, ValueError for a hostname that cannot name a node."""
    settings = infra.settings
    if open_store(settings.image_store, settings.s3_options()) is None:
        raise ConfigError("IMAGESVC_IMAGE_STORE: a node agent exports into the image store; set its directory")
    driver = snapshot_driver(settings)
    topology = infra.topology.for_node(hostname)
    identity = broker_identity(settings)
    handler = CommandConsumer(name="node-agent", engine=infra.engine, relay=outbox or relay(infra),
                              routes=node_agent_routes(settings, driver, hostname), check_first=True,
                              trusted_publishers=identity.services if identity else None,
                              compensations={"image.snapshot": functools.partial(
                                  abandon_snapshot_image, server=configured_image_server(settings))},
                              max_message_bytes=settings.max_message_bytes,
                              slots=user_slots(settings, NODE_AGENT_CONCURRENCY),
                              claim_seconds=settings.claim_seconds, max_runs=settings.max_attempts)
    return ConsumerRunner(
        name=f"node-agent-{hostname}",
        connect=lambda: infra.connect("node-agent"),
        queue=topology.node_queues[hostname],
        topology=topology,
        handler=handler,
        publisher=infra.publisher,
        prefetch=NODE_AGENT_CONCURRENCY,
        threads=NODE_AGENT_CONCURRENCY,
        max_attempts=settings.max_attempts,
        backoff=settings.retry_backoff,
        outage_backoff=settings.outage_backoff,
        identity=identity,
    )


def gateway_app(infra: Infrastructure):
    # Imported here, not at the top: a consumer process never serves HTTP, and the web stack
    # (Starlette, AnyIO, the routes) would add ~15 MiB to each one's resident memory.
    from imagesvc.services.gateway.app import create_app

    return create_app(infra.settings, engine=infra.engine, publisher=infra.publisher, topology=infra.topology,
                      connect=lambda: infra.connect("gateway-notifications"), system_metrics=system_metrics(infra))


def gateway_app_from_env():
    """Factory for ``uvicorn --factory`` (one per gateway worker process)."""
    settings = Settings.from_env(os.environ)
    from imagesvc.shared.logging import configure_logging

    configure_logging("gateway", fmt=settings.log_format, level=settings.log_level)
    metrics.forget_dead_processes()  # with --workers: the live gauges of a worker this one replaces
    return gateway_app(infrastructure(settings, purpose="gateway"))


def image_server_app(store: ImageStore):
    from imagesvc.services.image_server import app as image_server_http

    return image_server_http.create_app(store)


def embedded_app(infra: Infrastructure, store: ImageStore | None):
    """``serve``'s one app: the image server's paths (``/ping``, ``/images...``) go to the image
    server when there is a store, everything else (``/api``, the lifespan) to the gateway."""
    gateway = gateway_app(infra)
    if store is None:
        return gateway
    images = image_server_app(store)
    from imagesvc.services.image_server.app import serves

    async def app(scope, receive, send) -> None:
        if scope["type"] == "http" and serves(scope["path"]):
            await images(scope, receive, send)
        else:
            await gateway(scope, receive, send)

    return app


class Embedded:
    """Every consumer, the outbox relay, the lease sweeper and, with ``IMAGESVC_LOCAL_NODE``, that node's agent as
    threads of this process (the gateway runs beside). On the in-memory broker, ``start`` first
    ends or resumes what an earlier process left unfinished (``services.sweeper.recovery``): the
    caller must make sure that no other process uses the database (``serve`` holds a lock on it)."""

    def __init__(self, infra: Infrastructure):
        self.infra = infra
        self.relay = relay(infra)
        self.sweeper = lease_sweeper(infra, self.relay)
        self.runners = [consumer(infra, name, self.relay) for name in CONSUMERS]
        local = infra.settings.local_node
        if local:
            self.runners.append(node_agent(infra, local, self.relay))
        #: Every queue the runners consume, the local node's included.
        self.topology = infra.topology.for_node(local) if local else infra.topology
        self._threads: list[threading.Thread] = []

    def recover(self) -> Recovered:
        """End or resume the tasks an earlier process accepted and did not finish. Only before
        ``start``'s threads run, and only on the in-memory broker (nothing else can then hold a
        lease or a message)."""
        if not self.infra.settings.embedded_broker or self._threads:
            raise RuntimeError("start-up recovery is only safe on the in-memory broker, before the consumers run")
        topology = self.topology
        with self.infra.connect("recovery") as connection:
            topology.declare(connection.default_channel)  # a resumed command waits in its queue
        consumed = {b.routing_key for queue in [*topology.command_queues.values(), *topology.node_queues.values()]
                    for b in queue.bindings}
        settings = self.infra.settings
        store = open_store(settings.image_store, settings.s3_options())
        return StartupRecovery(self.infra.engine, self.relay, self.sweeper, store,
                               self.infra.publisher, exchange=topology.commands.name, consumed=consumed,
                               lease_seconds=settings.lease_seconds or CREATION_LEASE_SECONDS).run()

    def start(self) -> None:
        if self.infra.settings.embedded_broker:
            self.recover()
        targets = [(r.name, r.run) for r in self.runners] + [("relay", self.relay.run), ("sweeper", self.sweeper.run)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"embedded-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return all(r.ready.wait(timeout) for r in self.runners)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
        self.relay.stop()
        self.sweeper.stop()
        for thread in self._threads:
            thread.join(timeout=10)


__all__ = ["Infrastructure", "infrastructure", "consumer", "node_agent", "node_agent_routes", "snapshot_driver", "relay",
           "lease_sweeper",
           "gateway_app", "image_server_app", "embedded_app", "Embedded"]
