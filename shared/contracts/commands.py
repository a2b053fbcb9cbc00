"""Commands: imperative requests, each owned by exactly one consumer.

Field values other than ``name`` are carried as the client sent them (numbers may arrive as
strings, as the ``es`` client sends them) and validated by the consumer with the original API's
messages; the gateway normally sends them already normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from imagesvc.shared.contracts.base import UNSET, Message


class Command(Message):
    KIND: ClassVar[str] = "command"


@dataclass(frozen=True, kw_only=True)
class ImportImage(Command):
    """Import an image from a remote manifest (``POST /api/image/<name>/``)."""

    TYPE: ClassVar[str] = "image.import"
    name: str
    manifest_url: Any = UNSET
    file_url: Any = UNSET
    alias: Any = UNSET
    access: Any = UNSET
    owner: Any = UNSET
    desc: Any = UNSET
    version: Any = UNSET
    resize: Any = UNSET
    deploy: Any = UNSET
    tags: Any = UNSET
    dc_bound: Any = UNSET
    dc: Any = UNSET


@dataclass(frozen=True, kw_only=True)
class UpdateImage(Command):
    """Change an image's attributes; only supplied fields change (``PUT /api/image/<name>/``)."""

    TYPE: ClassVar[str] = "image.update"
    name: str
    alias: Any = UNSET
    access: Any = UNSET
    owner: Any = UNSET
    desc: Any = UNSET
    version: Any = UNSET
    resize: Any = UNSET
    deploy: Any = UNSET
    tags: Any = UNSET
    dc_bound: Any = UNSET
    #: Optimistic concurrency (``If-Match``): the image's stream version the client last saw;
    #: the updater refuses with 412 when the image has moved on. Absent: no check.
    expected_version: int = UNSET


@dataclass(frozen=True, kw_only=True)
class DeleteImage(Command):
    """Delete an image (``DELETE /api/image/<name>/``)."""

    TYPE: ClassVar[str] = "image.delete"
    name: str
    #: As ``UpdateImage.expected_version``.
    expected_version: int = UNSET


@dataclass(frozen=True, kw_only=True)
class AttachImage(Command):
    """Make an image usable in a datacenter; clears its ``dc_bound`` (``POST /api/dc/<dc>/image/<name>/``).
    SuperAdmin only."""

    TYPE: ClassVar[str] = "image.attach"
    name: str
    dc: str


@dataclass(frozen=True, kw_only=True)
class DetachImage(Command):
    """Stop an image being usable in a datacenter; clears its ``dc_bound``
    (``DELETE /api/dc/<dc>/image/<name>/``). SuperAdmin only."""

    TYPE: ClassVar[str] = "image.detach"
    name: str
    dc: str


@dataclass(frozen=True, kw_only=True)
class RefreshImageRepositories(Command):
    """Download the image lists of remote repositories (``PUT /api/imagestore/[<name>/]``).

    ``repositories``: name -> URL of each repository to refresh, as the submitter's configuration
    names them (the consumer refreshes only repositories its own configuration names with the same
    URL). ``name``: set when one repository was asked for by name; the task's result is then that
    repository's object instead of a list.
    """

    TYPE: ClassVar[str] = "imagestore.refresh"
    repositories: dict[str, Any]
    name: str = UNSET


@dataclass(frozen=True, kw_only=True)
class CreateImageFromSnapshot(Command):
    """Create an image from a VM disk snapshot (``POST /api/vm/<vm>/snapshot/<snapname>/image/<name>/``).

    Addressed to the node that runs the VM (its agent exports the snapshot into the image store):
    published on the commands exchange with the node's routing key. ``vm`` is the VM's uuid.
    """

    TYPE: ClassVar[str] = "image.snapshot"
    name: str
    vm: str
    snapshot: str
    disk_id: int = 1
    alias: Any = UNSET
    version: Any = UNSET
    owner: Any = UNSET
    access: Any = UNSET
    desc: Any = UNSET
    resize: Any = UNSET
    deploy: Any = UNSET
    tags: Any = UNSET
