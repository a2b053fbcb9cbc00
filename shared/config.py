"""Process settings, read once from an environment mapping.

``Settings.from_env`` is a pure function of the mapping it is given: nothing here reads
``os.environ`` by itself, so tests pass their own mapping and ``__main__`` modules pass theirs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Mapping

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/imagesvc"


class ConfigError(ValueError):
    """A setting has a value the process cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every tunable of an imagesvc process. Defaults suit a loopback development setup."""

    #: One AMQP URL, or the URLs of a RabbitMQ cluster's nodes separated by ``;`` (kombu's
    #: failover list; ``broker_urls``); or ``memory://``, the embedded mode's broker.
    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = DEFAULT_DATABASE_URL
    #: Prefix for every exchange and queue name (lets test runs share one broker safely).
    topology_prefix: str = ""
    log_format: str = "auto"  # auto (JSON unless on a terminal) | json | console
    log_level: str = "INFO"
    #: Seconds the gateway waits for a task's first decisive event before answering 201.
    answer_window: float = 5.0
    #: AMQP heartbeat in seconds (kombu's default of 0 switches heartbeats off).
    heartbeat: int = 15
    #: Seconds to wait for a publisher confirm (and for a broker connection) before giving up.
    publish_timeout: float = 5.0
    #: Unacknowledged deliveries per consumer process.
    prefetch: int = 16
    #: Handler threads per consumer process (they mostly wait for the database).
    worker_threads: int = 8
    #: Long-running commands (imports, snapshot images) of one user running at once in one
    #: consumer process; the user's further ones wait their turn in the queue. 0: half the
    #: process's handler threads, at least 1 (a node agent's: 1).
    long_commands_per_user: int = 0
    #: Deliveries of one message before it is dead-lettered.
    max_attempts: int = 5
    #: Delay before each retry, in seconds (the last value repeats).
    retry_backoff: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0)
    #: Delay before each retry of a message whose handler found the database unreachable
    #: (``Transient``), in seconds (the last value repeats). Longer than ``retry_backoff`` so that
    #: ``max_attempts`` outlive a database outage of about their sum (26 s) without dead-lettering.
    outage_backoff: tuple[float, ...] = (1.0, 5.0, 10.0, 10.0)
    #: Operator allow-list for fetches: host names, IP addresses or CIDRs, each with an optional
    #: ``:port`` (deviations #6).
    fetch_allow: tuple[str, ...] = ()
    #: Where the image server keeps images: a local directory (``file://`` optional), an
    #: S3-compatible bucket ``s3://bucket/prefix`` (the ``s3_*`` settings), or ``none`` for no
    #: image server (the original's database-level operations). The embedded mode's default is
    #: ``<data_dir>/images``.
    image_store: str = "none"
    #: The S3 store's API URL (e.g. ``http://127.0.0.1:7480``); empty: boto3's own setting
    #: (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else AWS). Region and credentials come from
    #: boto3's chain (``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, profiles).
    s3_endpoint_url: str = ""
    #: ``path`` (``<endpoint>/<bucket>``, what most S3-compatible servers want), ``virtual``
    #: (``<bucket>.<endpoint>``) or ``auto``.
    s3_addressing_style: str = "auto"
    #: Seconds to connect to the S3 endpoint, and to wait for the next bytes of an answer.
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0
    #: Attempts per S3 request (transient errors and throttling are retried, with backoff).
    s3_max_attempts: int = 3
    #: Bytes per uploaded part of an image file (memory held per upload; at least 5 MiB).
    s3_part_bytes: int = 8 * 1024 * 1024
    #: The image server's own URL as compute nodes and other imagesvc instances reach it
    #: (``imagesvc image-server``; in the embedded mode the ``serve`` address). A file URL on
    #: this origin is verified in the store instead of downloaded (reference §7.3, deviations #8).
    image_server_url: str = ""
    #: Hostname of the compute node that hosts the image server; its status must be ``online``
    #: for image-changing commands (423 Node is not operational). Empty: not checked.
    image_server_node: str = ""
    #: How the image server answers a GET of an image's file: ``off`` (it streams the file) or
    #: ``presigned`` (an S3 store only: a 302 to a presigned URL of the object, valid
    #: ``image_server_redirect_seconds``; clients then download from the object store directly).
    image_server_redirect: str = "off"
    image_server_redirect_seconds: int = 300
    #: Largest image file an import accepts, in bytes.
    max_image_bytes: int = 64 * 1024**3
    #: Wall-clock deadline, in seconds, of an import's manifest fetch and of its file probe, each
    #: (connecting, the answer's headers and its body).
    fetch_timeout: float = 5.0
    #: Download timeouts, in seconds: connecting, waiting for the next bytes, the whole file (a
    #: wall-clock deadline over connecting, the headers and the body).
    download_connect_timeout: float = 5.0
    download_idle_timeout: float = 30.0
    #: Below RabbitMQ's default consumer timeout (30 min): an import is acknowledged when its
    #: download ends, and a delivery the broker times out is given out again (reliability C5).
    download_timeout: float = 25 * 60.0
    #: Remote image repositories (reference §2.3): ``name=url`` pairs, comma-separated.
    image_repositories: tuple[str, ...] = ()
    #: Seconds a gateway process reuses a resolved API key, user or datacenter.
    auth_cache_seconds: float = 2.0
    #: Lifetime of a login token (the original's AUTHTOKEN_DURATION).
    token_seconds: float = 3600.0
    #: Requests per user and window, e.g. ``45/minute`` (the original's rate), or ``off``.
    throttle: str = "off"
    #: Broker users of imagesvc's own processes (default: the user of ``broker_url``): their
    #: commands may act for any user, and they alone publish image and task events. Any other
    #: broker user's commands may act only for the imagesvc user of the same name (RabbitMQ
    #: vouches for ``user_id``).
    service_users: tuple[str, ...] = ()
    #: Broker users (besides the service users) whose ``node.*`` events the projector believes.
    node_publishers: tuple[str, ...] = ()
    #: Broker users (besides the service users) whose ``vm.*`` events the projector believes.
    vm_publishers: tuple[str, ...] = ()
    #: Where the embedded mode keeps its SQLite file (and later the image store).
    data_dir: str = "./var"
    #: Largest accepted request body, in bytes.
    max_body_bytes: int = 1024 * 1024
    #: Largest message a consumer handles, in bytes (a larger one is refused before it is
    #: decoded). Set RabbitMQ's ``max_message_size`` a little above it (docs/security.md).
    max_message_bytes: int = 1024 * 1024
    #: Length limits of the work queues and of the dead-letter queues (RabbitMQ), in messages;
    #: a publish into a full queue is refused (nacked), never dropped after its confirm. Every
    #: process must use the same values (a queue cannot be declared with other limits).
    queue_max_length: int = 100_000
    dead_letter_max_length: int = 10_000
    #: Database connections per process.
    db_pool_size: int = 10
    #: How a node agent reads VM disk snapshots: ``file`` (read-only files under
    #: ``snapshot_dir``, ``<dir>/<vm uuid>/disk-<id>@<snapname>``) or ``zfs`` (``zfs send``; not
    #: tested against ZFS here). See ``shared.snapshots``.
    snapshot_driver: str = "file"
    #: The file driver's directory. The embedded mode's default is ``<data_dir>/vms``; elsewhere a
    #: node agent with the file driver needs it set.
    snapshot_dir: str = ""
    #: gzip level of exported snapshots, 1-9 (6: esimg's 9 costs 75 % more CPU for 0.25 % smaller
    #: files on disk-like data; see services/node_agent/export.py).
    snapshot_gzip_level: int = 6
    #: The zfs driver: the command (a path, or a wrapper that adds privileges) and the dataset of
    #: a VM disk, with ``{vm_uuid}``, ``{disk_id}`` (from 1) and ``{disk_index}`` (from 0).
    zfs_command: str = "zfs"
    zfs_dataset: str = "zones/{vm_uuid}-disk{disk_index}"
    #: Lease of an image under a long-running command, in seconds (renewed while it works; a
    #: lease that runs out means its worker died). 0: each command's default (creations 600,
    #: manifest rewrites and removals 300).
    lease_seconds: float = 0.0
    #: How long a delivery's claim on its command lives unless renewed (renewed five times in that
    #: while the handler runs): how soon a command whose handler's process died is taken over by
    #: its next delivery; meanwhile other copies of the command wait (shared.db.task_owners).
    claim_seconds: float = 3.0
    #: Seconds between two runs of the lease sweeper (in every command-consumer process), which
    #: ends the tasks whose lease ran out (``services.sweeper``).
    sweep_seconds: float = 30.0
    #: ``serve`` only: the hostname of the compute node this process stands for; its node agent
    #: then runs as a thread too (snapshot images in the embedded mode). Empty: no node agent.
    local_node: str = ""

    # --- The HTTP edge (imagesvc/edge.py): slow and oversized clients, logins, proxies ---------
    #: Seconds a client has to send a request's head (request line and headers), counted from
    #: the connection's start, or for a kept-alive connection's next request from its first
    #: byte; then 408 and the connection is closed.
    header_timeout: float = 10.0
    #: Seconds a client has to send a request's body once its head is in; then 408 and closed.
    body_timeout: float = 30.0
    #: Largest request head, in bytes (431 above, read no further).
    max_header_bytes: int = 16 * 1024
    #: Open client connections per server process. A newcomer beyond it closes the connection
    #: that has waited longest for its request head (503 to the newcomer when none is waiting).
    max_connections: int = 4096
    #: Proxies whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed (IP addresses or
    #: CIDRs). Empty: none; the client address is the connection's peer.
    trusted_proxies: tuple[str, ...] = ()
    #: Login attempts per user name and per client address in a sliding window, e.g.
    #: ``10/minute``, or ``off``; a successful login is not counted.
    login_throttle: str = "10/minute"
    #: Password hashes a gateway process computes at once, and logins that may wait for one;
    #: a login beyond both is answered 429 at once.
    password_hash_threads: int = 1
    password_hash_queue: int = 8
    #: A worker's or node agent's ``/healthz`` and ``/readyz`` (0: not served; the gateway and the
    #: image server answer them on their own port).
    health_port: int = 0
    health_host: str = "127.0.0.1"
    #: Prometheus metrics (``/metrics`` on the gateway's, serve's and the health port): on or off.
    metrics: str = "on"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, embedded: bool = False, **overrides: object) -> "Settings":
        """Build settings from ``IMAGESVC_*`` variables; ``overrides`` win over the mapping.

        ``embedded``: the broker and the database that are not configured are the embedded
        mode's (``memory://`` and the SQLite file under ``IMAGESVC_DATA_DIR``), as for ``serve``
        and the commands that work on its database.

        Raises ConfigError naming the variable when a value cannot be parsed.
        """
        if embedded:
            base = cls.from_env(environ)
            defaults: dict[str, object] = {}
            if "IMAGESVC_BROKER_URL" not in environ:
                defaults["broker_url"] = "memory://"
            if "IMAGESVC_DATABASE_URL" not in environ:
                defaults["database_url"] = "sqlite:///" + os.path.abspath(os.path.join(base.data_dir, "imagesvc.db"))
            if "IMAGESVC_IMAGE_STORE" not in environ:
                defaults["image_store"] = os.path.abspath(os.path.join(base.data_dir, "images"))
            if "IMAGESVC_SNAPSHOT_DIR" not in environ:
                defaults["snapshot_dir"] = os.path.abspath(os.path.join(base.data_dir, "vms"))
            return cls.from_env(environ, **{**defaults, **overrides})
        for old, new in _RENAMED.items():
            if old in environ:
                raise ConfigError(f"{old} was renamed {new}: set that instead")
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            var = "IMAGESVC_" + f.name.upper()
            if var not in environ:
                continue
            raw = environ[var]
            try:
                values[f.name] = _parse(f.type, raw)
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r}: {exc}") from None
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        try:
            broker_urls(self.broker_url)
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_BROKER_URL: {exc}") from None
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("IMAGESVC_LOG_FORMAT must be auto, json or console")
        if self.answer_window < 0:
            raise ConfigError("IMAGESVC_ANSWER_WINDOW must not be negative")
        if self.max_attempts < 1:
            raise ConfigError("IMAGESVC_MAX_ATTEMPTS must be at least 1")
        if not self.retry_backoff:
            raise ConfigError("IMAGESVC_RETRY_BACKOFF needs at least one delay")
        if not self.outage_backoff:
            raise ConfigError("IMAGESVC_OUTAGE_BACKOFF needs at least one delay")
        try:
            parse_rate(self.throttle)
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_THROTTLE: {exc}") from None
        self._validate_store()
        if self.max_image_bytes < 1:
            raise ConfigError("IMAGESVC_MAX_IMAGE_BYTES must be at least 1")
        if min(self.download_connect_timeout, self.download_idle_timeout, self.download_timeout) <= 0:
            raise ConfigError("IMAGESVC_DOWNLOAD_*_TIMEOUT must be positive")
        if self.fetch_timeout <= 0:
            raise ConfigError("IMAGESVC_FETCH_TIMEOUT must be positive")
        try:
            self.repositories()
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_IMAGE_REPOSITORIES: {exc}") from None
        if self.prefetch < 1 or self.worker_threads < 1 or self.db_pool_size < 1:
            raise ConfigError("IMAGESVC_PREFETCH, IMAGESVC_WORKER_THREADS and IMAGESVC_DB_POOL_SIZE must be at least 1")
        if self.long_commands_per_user < 0:
            raise ConfigError("IMAGESVC_LONG_COMMANDS_PER_USER must not be negative (0: half the handler threads)")
        if self.heartbeat < 0:
            raise ConfigError("IMAGESVC_HEARTBEAT must not be negative (0 switches heartbeats off)")
        if self.max_body_bytes < 1024:
            raise ConfigError("IMAGESVC_MAX_BODY_BYTES must be at least 1024")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError("IMAGESVC_MAX_MESSAGE_BYTES must be at least 65536")
        if self.queue_max_length < 1 or self.dead_letter_max_length < 1:
            raise ConfigError("IMAGESVC_QUEUE_MAX_LENGTH and IMAGESVC_DEAD_LETTER_MAX_LENGTH must be at least 1")
        from imagesvc.shared.snapshots import DRIVERS, check_dataset_template

        if self.snapshot_driver not in DRIVERS:
            raise ConfigError(f"IMAGESVC_SNAPSHOT_DRIVER must be one of {', '.join(DRIVERS)}")
        if not 1 <= self.snapshot_gzip_level <= 9:
            raise ConfigError("IMAGESVC_SNAPSHOT_GZIP_LEVEL must be 1 to 9")
        if not self.zfs_command.strip():
            raise ConfigError("IMAGESVC_ZFS_COMMAND must not be empty")
        try:
            check_dataset_template(self.zfs_dataset)
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_ZFS_DATASET: {exc}") from None
        if self.lease_seconds < 0:
            raise ConfigError("IMAGESVC_LEASE_SECONDS must not be negative (0: each command's default)")
        if not 0 < self.claim_seconds < float("inf"):
            raise ConfigError("IMAGESVC_CLAIM_SECONDS must be a positive number of seconds")
        if self.sweep_seconds <= 0:
            raise ConfigError("IMAGESVC_SWEEP_SECONDS must be positive")
        if self.local_node:
            from imagesvc.shared.contracts.events import node_hostname_problem

            problem = node_hostname_problem(self.local_node)
            if problem:
                raise ConfigError(f"IMAGESVC_LOCAL_NODE: {problem}")
        from imagesvc.shared.net.fetch import parse_allow_list

        try:
            parse_allow_list(self.fetch_allow)
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_FETCH_ALLOW: {exc}") from None
        if self.metrics not in ("on", "off"):
            raise ConfigError("IMAGESVC_METRICS must be on or off")
        self._validate_edge()

    def _validate_store(self) -> None:
        from imagesvc.shared.store import open_store
        from imagesvc.shared.store.s3 import ADDRESSING_STYLES, MIN_PART_BYTES

        if self.s3_addressing_style not in ADDRESSING_STYLES:
            raise ConfigError(f"IMAGESVC_S3_ADDRESSING_STYLE must be one of {', '.join(ADDRESSING_STYLES)}")
        if self.s3_connect_timeout <= 0 or self.s3_read_timeout <= 0:
            raise ConfigError("IMAGESVC_S3_CONNECT_TIMEOUT and IMAGESVC_S3_READ_TIMEOUT must be positive")
        if self.s3_max_attempts < 1:
            raise ConfigError("IMAGESVC_S3_MAX_ATTEMPTS must be at least 1")
        if self.s3_part_bytes < MIN_PART_BYTES:
            raise ConfigError(f"IMAGESVC_S3_PART_BYTES must be at least {MIN_PART_BYTES} (S3's smallest part)")
        if self.image_server_redirect not in ("off", "presigned"):
            raise ConfigError("IMAGESVC_IMAGE_SERVER_REDIRECT must be off or presigned")
        if not 1 <= self.image_server_redirect_seconds <= 7 * 86400:
            raise ConfigError("IMAGESVC_IMAGE_SERVER_REDIRECT_SECONDS must be 1 to 604800 (7 days, SigV4's limit)")
        is_s3 = self.image_store.strip().lower().startswith("s3://")
        # Checked here, not imported: boto3 is imported at the store's first use only.
        if is_s3 and importlib.util.find_spec("boto3") is None:
            raise ConfigError("IMAGESVC_IMAGE_STORE: an s3:// store needs boto3, which is not installed "
                              "(pip install 'imagesvc[s3]')")
        if self.image_server_redirect == "presigned" and not is_s3:
            raise ConfigError("IMAGESVC_IMAGE_SERVER_REDIRECT=presigned needs an s3:// IMAGESVC_IMAGE_STORE")
        if self.s3_endpoint_url:
            try:
                self.s3_options().validate()
            except ValueError as exc:
                raise ConfigError(f"IMAGESVC_S3_ENDPOINT_URL: {exc}") from None
        try:
            open_store(self.image_store, self.s3_options())
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_IMAGE_STORE: {exc}") from None

    def s3_options(self):
        """How an s3:// image store is reached (``shared.store.s3.S3Options``)."""
        from imagesvc.shared.store.s3 import S3Options

        return S3Options(endpoint_url=self.s3_endpoint_url.strip(), addressing_style=self.s3_addressing_style,
                         connect_timeout=self.s3_connect_timeout, read_timeout=self.s3_read_timeout,
                         max_attempts=self.s3_max_attempts, part_bytes=self.s3_part_bytes,
                         presign_seconds=self.image_server_redirect_seconds
                         if self.image_server_redirect == "presigned" else 0)

    def _validate_edge(self) -> None:
        """The HTTP edge's settings (one block, see above)."""
        if not all(0 < timeout < float("inf") for timeout in (self.header_timeout, self.body_timeout)):
            raise ConfigError("IMAGESVC_HEADER_TIMEOUT and IMAGESVC_BODY_TIMEOUT must be positive numbers of seconds")
        if self.max_header_bytes < 1024:
            raise ConfigError("IMAGESVC_MAX_HEADER_BYTES must be at least 1024")
        if self.max_connections < 1:
            raise ConfigError("IMAGESVC_MAX_CONNECTIONS must be at least 1")
        import ipaddress

        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)  # an address is a network of one
            except ValueError as exc:
                raise ConfigError(f"IMAGESVC_TRUSTED_PROXIES: {exc}") from None
        try:
            parse_rate(self.login_throttle)
        except ValueError as exc:
            raise ConfigError(f"IMAGESVC_LOGIN_THROTTLE: {exc}") from None
        if self.password_hash_threads < 1 or self.password_hash_queue < 0:
            raise ConfigError("IMAGESVC_PASSWORD_HASH_THREADS must be at least 1, "
                              "IMAGESVC_PASSWORD_HASH_QUEUE must not be negative")
        if not 0 <= self.health_port <= 65535:
            raise ConfigError("IMAGESVC_HEALTH_PORT must be a port number (0: not served)")

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("memory://")

    def repositories(self) -> dict[str, str]:
        """The configured remote repositories, name -> URL (raises ValueError if malformed)."""
        found: dict[str, str] = {}
        for entry in self.image_repositories:
            name, sep, url = entry.partition("=")
            name, url = name.strip(), url.strip()
            if not sep or not name or not url.lower().startswith(("http://", "https://")):
                raise ValueError(f"expected name=http(s)://url, got {entry!r}")
            if not _REPOSITORY_NAME.match(name):
                # It names the repository in URLs (/api/imagestore/<name>/) and in the database.
                raise ValueError(f"repository name {name!r}: use at most 64 of A-Z a-z 0-9 . _ -")
            found[name] = url
        return dict(sorted(found.items()))


#: Schemes of RabbitMQ URLs (kombu's names for its py-amqp transport).
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def broker_urls(value: str) -> tuple[str, ...]:
    """The URLs of a broker setting, in order: one URL, or several separated by ``;`` (kombu's
    failover list), each a node of the same RabbitMQ cluster.

    Raises ValueError (its message shows no password) unless every URL is an AMQP URL with a host,
    all with the same scheme, user and virtual host (the process is one broker user wherever it
    connects: ``user_id`` and the service users depend on it), or the value is ``memory://`` alone.
    """
    urls = tuple(part.strip() for part in value.split(";") if part.strip())
    if not urls:
        raise ValueError("no broker URL")
    from kombu.utils.url import parse_url

    parsed = []
    for url in urls:
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme == "memory":
            parsed.append((scheme, None, None))
            continue
        if scheme not in AMQP_SCHEMES:
            raise ValueError(f"{masked_url(url)}: expected amqp://user:password@host:port/vhost "
                             f"(schemes {', '.join(AMQP_SCHEMES)}), or memory:// alone")
        try:
            parts = parse_url(url)
            port = parts.get("port")
        except ValueError:
            raise ValueError(f"{masked_url(url)}: not a valid URL (a port must be a number)") from None
        if not parts.get("hostname") or (port is not None and not 0 < int(port) < 65536):
            raise ValueError(f"{masked_url(url)}: needs a host (and a port from 1 to 65535)")
        parsed.append((scheme, parts.get("userid") or "guest", parts.get("virtual_host") or "/"))
    schemes = {scheme for scheme, _, _ in parsed}
    if "memory" in schemes and len(urls) > 1:
        raise ValueError("memory:// (the embedded mode's in-process broker) cannot be listed with other "
                         "URLs: give it alone, or only the amqp:// URLs of one RabbitMQ cluster's nodes")
    if len(schemes) > 1:
        raise ValueError(f"the URLs mix schemes ({', '.join(sorted(schemes))}): the nodes of one cluster "
                         "are all reached the same way")
    if len({user for _, user, _ in parsed}) > 1 or len({vhost for _, _, vhost in parsed}) > 1:
        raise ValueError("every URL must name the same user and virtual host (one cluster's nodes: "
                         "the process is one broker user wherever it connects)")
    return urls


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and ``imagesvc config show``); in a
    ``;``-separated list of URLs, each one's."""
    if ";" in url:
        return ";".join(masked_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}"


#: Settings whose values carry secrets (URLs with passwords): masked wherever they are shown.
_SECRET_URLS = ("broker_url", "database_url")

#: Where a value came from (``sources``).
FROM_ENVIRONMENT = "environment"
FROM_SERVE_DEFAULT = "serve's default"
FROM_DEFAULT = "default"


def effective(settings: Settings) -> dict[str, object]:
    """Every setting by variable name, secrets masked: what a process logs as it starts."""
    shown: dict[str, object] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in _SECRET_URLS:
            value = masked_url(value)
        elif isinstance(value, tuple):
            value = ",".join(str(part) for part in value)
        shown["IMAGESVC_" + f.name.upper()] = value
    return shown


def sources(settings: Settings, environ: Mapping[str, str], *, embedded: bool = False) -> dict[str, str]:
    """Where each setting of ``settings`` (built from ``environ``) came from, by variable name:
    the environment, ``serve``'s default (the embedded mode's broker, database, image store and
    snapshot directory under ``IMAGESVC_DATA_DIR``), or the built-in default."""
    plain = Settings()
    found: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        var = "IMAGESVC_" + f.name.upper()
        if var in environ:
            found[var] = FROM_ENVIRONMENT
        elif embedded and getattr(settings, f.name) != getattr(plain, f.name):
            found[var] = FROM_SERVE_DEFAULT
        else:
            found[var] = FROM_DEFAULT
    return found


#: Variables that were renamed: a process refuses to start with the old name rather than ignore it.
_RENAMED = {"IMAGESVC_TRUSTED_BROKER_USERS": "IMAGESVC_SERVICE_USERS"}

_REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def _parse(annotation: str, raw: str) -> object:
    kind = str(annotation)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("tuple[float"):
        return tuple(float(part) for part in _split(raw))
    if kind.startswith("tuple[str"):
        return tuple(_split(raw))
    return raw


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


def parse_rate(text: str) -> tuple[int, float] | None:
    """``"45/minute"`` -> (45, 60.0); ``"off"`` -> None. Raises ValueError for anything else."""
    if text.strip().lower() in ("", "off"):
        return None
    match = _RATE.match(text.lower())
    if match is None or match.group(2) not in _PERIODS or int(match.group(1)) < 1:
        raise ValueError("expected 'off' or <requests>/<second|minute|hour|day>, e.g. 45/minute")
    return int(match.group(1)), float(_PERIODS[match.group(2)])
