"""One deployment, one configuration: the settings every process of a deployment must agree on,
recorded once in its database and checked by each process as it starts.

Processes on different machines are configured separately, and some disagreements lose data
without an error: an importer without the image store records images whose files go nowhere; a
worker that opens another (say, an empty, unmounted) directory lets the catalogue and the store
drift apart; two prefixes split the queues. So the first process to start records what it uses
(``deployment`` table), and every later one compares:

- ``image_store``: the identity of the image store (a uuid written into the store, not its path,
  which may differ between machines), or ``none``. Checked by the processes that use the store:
  the gateway, the importer, the updater, the deleter, node agents and ``serve``.
- ``image_server_url``: checked by the same processes (``serve`` only when it is configured: by
  default it is ``serve``'s own address).
- ``topology_prefix``, ``queue_max_length``, ``dead_letter_max_length``: checked by every process
  on RabbitMQ (``serve``'s in-memory broker has no one else to agree with).

A mismatch is a ``DeploymentMismatch`` (a ``ConfigError``) naming, for each setting, this
process's value, the recorded one, who recorded it and how to fix it. ``record`` replaces the
record on purpose (``imagesvc config record``: the store moved, the prefix changed).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from imagesvc.shared.config import ConfigError, Settings
from imagesvc.shared.db import deployment as table
from imagesvc.shared.db.deployment import Recorded, recorded
from imagesvc.shared.store import StoreError, open_store
from imagesvc.shared.store.local import IDENTITY_FILE

#: The recorded value of "no image store".
NO_STORE = "none"


class DeploymentMismatch(ConfigError):
    """This process's settings disagree with the deployment's record; the message says how."""


@dataclass(frozen=True)
class Fact:
    """One setting as this process has it."""

    #: Its name in the record.
    name: str
    #: The variable that sets it.
    setting: str
    #: What is compared (for the store: its identity).
    value: str
    #: How to show this process's value (for the store: its path and identity).
    shown: str


def process_label(process: str) -> str:
    """``<process>@<host>``: who recorded a value."""
    return f"{process}@{socket.gethostname()}"


def facts(settings: Settings, *, uses_store: bool, server_url_configured: bool = True,
          create_store_identity: bool = False) -> list[Fact]:
    """This process's facts. ``uses_store``: it reads or writes the image store (and so must
    agree on it and on the image server's URL); ``server_url_configured``: false for ``serve``
    with its derived default URL (nobody else uses it). ``create_store_identity``: give a store
    without an identity one (only when the deployment has recorded none). Raises ConfigError
    when the store cannot be read."""
    found: list[Fact] = []
    if uses_store:
        found.append(_store_fact(settings, create=create_store_identity))
        if server_url_configured:
            found.append(Fact("image_server_url", "IMAGESVC_IMAGE_SERVER_URL", settings.image_server_url,
                              repr(settings.image_server_url)))
    if not settings.embedded_broker:
        found += [
            Fact("topology_prefix", "IMAGESVC_TOPOLOGY_PREFIX", settings.topology_prefix,
                 repr(settings.topology_prefix)),
            Fact("queue_max_length", "IMAGESVC_QUEUE_MAX_LENGTH", str(settings.queue_max_length),
                 str(settings.queue_max_length)),
            Fact("dead_letter_max_length", "IMAGESVC_DEAD_LETTER_MAX_LENGTH", str(settings.dead_letter_max_length),
                 str(settings.dead_letter_max_length)),
        ]
    return found


def _store_fact(settings: Settings, *, create: bool) -> Fact:
    store = open_store(settings.image_store, settings.s3_options())
    if store is None:
        return Fact("image_store", "IMAGESVC_IMAGE_STORE", NO_STORE, "none (IMAGESVC_IMAGE_STORE=none)")
    try:
        identity = store.identity(create=create)
    except StoreError as exc:
        raise ConfigError(f"IMAGESVC_IMAGE_STORE={settings.image_store}: {exc}") from None
    if identity is None:
        return Fact("image_store", "IMAGESVC_IMAGE_STORE", "",
                    f"{store.location}, which holds no store identity (an empty or unmounted directory, or "
                    f"another bucket or prefix?)")
    return Fact("image_store", "IMAGESVC_IMAGE_STORE", identity, f"{store.location} (store {identity})")


def check(engine, settings: Settings, *, process: str, uses_store: bool,
          server_url_configured: bool = True) -> list[Fact]:
    """Compare this process's facts with the record, recording those not recorded yet (the first
    process of a deployment records them all; concurrent first processes: one wins, the others
    are compared with it). Returns this process's facts; raises DeploymentMismatch when any
    disagrees, ConfigError when the store cannot be read."""
    before = recorded(engine)
    mine = facts(settings, uses_store=uses_store, server_url_configured=server_url_configured,
                 create_store_identity="image_store" not in before)
    table.record_missing(engine, [(fact.name, fact.value) for fact in mine
                                  if fact.name not in before and fact.value != ""], process_label(process))
    now = recorded(engine)
    problems = [_mismatch(fact, now[fact.name], process) for fact in mine
                if fact.name in now and now[fact.name].value != fact.value]
    if problems:
        raise DeploymentMismatch("this process disagrees with its deployment's recorded settings:\n  "
                                 + "\n  ".join(problems))
    return mine


def record(engine, settings: Settings, *, process: str) -> list[Fact]:
    """Replace the record with this environment's facts (every one a full process would have),
    for a deliberate change. Gives a store without an identity one."""
    mine = facts(settings, uses_store=True, create_store_identity=True)
    table.replace(engine, [(fact.name, fact.value) for fact in mine], process_label(process))
    return mine


def _mismatch(fact: Fact, there: Recorded, process: str) -> str:
    recorded_as = (f"{there.value!r}" if fact.name != "image_store"
                   else ("none" if there.value == NO_STORE else f"store {there.value}"))
    when = there.recorded_at.strftime("%Y-%m-%d %H:%M UTC")
    head = (f"{fact.setting}: this {process} has {fact.shown}, but the deployment's is {recorded_as} "
            f"(recorded by {there.recorded_by} on {when}).")
    if fact.name == "image_store" and there.value != NO_STORE:
        fix = (f"Set {fact.setting} to that store's directory as mounted on this machine, or its s3://bucket/prefix "
               f"(it holds the file or object {IDENTITY_FILE} with that uuid)")
    else:
        fix = f"Set {fact.setting} as every other process of the deployment has it"
    return (f"{head} {fix}; if the deployment has deliberately changed, run `imagesvc config record --yes` "
            f"with this process's settings.")


__all__ = ["DeploymentMismatch", "Fact", "NO_STORE", "Recorded", "check", "facts", "process_label",
           "record", "recorded"]
