"""Decide an ``imagestore.refresh`` (reference §3.8): download remote repositories' image lists.

Order: the actor's entry permission (403), every asked-for repository known to this consumer's
configuration with the same URL (404 ``ImageStore not found``), the global lease lock (423
``Task is already running``). Each list is fetched outside any transaction with the safe
fetcher, the lease renewed before each one; then one transaction stores every repository's new
state, releases the lock and ends the task: SUCCESS with the repository objects, or, when any
repository failed, FAILURE 400 with the same objects (the original's answer), committed first.
"""

from __future__ import annotations

from typing import Mapping

from imagesvc.domain import policy, repositories
from imagesvc.shared.contracts import RefreshImageRepositories
from imagesvc.shared.db import locks
from imagesvc.shared.db import repositories as stored
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.db.records import RepositoryRecord
from imagesvc.shared.errors import CommandFailed, Refused
from imagesvc.shared.handling import CommandContext
from imagesvc.shared.logging import get_logger
from imagesvc.shared.net.fetch import FetchError, Fetcher

log = get_logger(__name__)


def refresh_repositories(command: RefreshImageRepositories, ctx: CommandContext, *, fetcher: Fetcher,
                         configured: Mapping[str, str], local: tuple[str, str] | None) -> None:
    """``configured``: this consumer's repositories (name -> URL); ``local``: the image server as
    a repository (name, URL), or None."""
    with ctx.reading() as catalogue:
        actor = policy.actor_import_access(catalogue, ctx.actor)
        default_dc = catalogue.default_datacenter().name
    known = repositories.visible(configured, local, is_superadmin=actor.is_superadmin)
    wanted = dict(sorted(command.repositories.items()))
    if any(known.get(name) != url for name, url in wanted.items()) or (command.name and list(wanted) != [command.name]):
        raise Refused(404, repositories.NOT_FOUND, code="repository_not_found")

    with ctx.writing() as tx:
        if not locks.acquire(tx.conn, repositories.LOCK_NAME, ctx.task_id, repositories.LOCK_SECONDS):
            raise Refused(423, repositories.ALREADY_RUNNING, code="task_running")
        previous = stored.load(tx.conn, list(wanted))
    released = False
    try:
        states = [_refresh_one(ctx, fetcher, name, url, previous.get(name)) for name, url in wanted.items()]
        objects = [repositories.repository_object(s.name, s.url, s) for s in states]
        result = objects[0] if command.name else objects
        any_failed = any(s.error for s in states)
        with ctx.writing() as tx:
            for state in states:
                (stored.save_failure if state.error else stored.save_refreshed)(tx.conn, state)
            locks.release(tx.conn, repositories.LOCK_NAME, ctx.task_id)
            if not any_failed:
                tx.finish([], result=result, owner=actor.user.username, dc=default_dc)
        released = True
    finally:
        if not released:
            _release(ctx)
    if any_failed:
        raise CommandFailed(result, http_code=400, code="repository_error")


def _refresh_one(ctx: CommandContext, fetcher: Fetcher, name: str, url: str,
                 previous: RepositoryRecord | None) -> RepositoryRecord:
    """The repository's new state (not stored yet). Renews the lease first: a refresh of many
    slow repositories may outlast one lease."""
    with ctx.writing() as tx:
        if not locks.acquire(tx.conn, repositories.LOCK_NAME, ctx.task_id, repositories.LOCK_SECONDS):
            raise Refused(423, repositories.ALREADY_RUNNING, code="task_running")
    source = repositories.images_url(url)
    try:
        raw = fetcher.get(source, max_bytes=repositories.LIST_MAX_BYTES, timeout=repositories.FETCH_TIMEOUT)
        images = repositories.parse_image_list(raw)
    except (FetchError, repositories.RepositoryError) as exc:
        log.warning("imagestore.refresh_failed", repository=name, url=source, error=str(exc))
        return repositories.failed(name, url, previous, str(exc))
    log.info("imagestore.refreshed", repository=name, url=source, images=len(images))
    return repositories.refreshed(name, url, images=images, now=utcnow())


def _release(ctx: CommandContext) -> None:
    """Give the lock back after an unexpected failure (best effort: the lease expires anyway)."""
    try:
        with ctx.writing() as tx:
            locks.release(tx.conn, repositories.LOCK_NAME, ctx.task_id)
    except Exception as exc:  # noqa: BLE001 - the original failure is what matters
        log.warning("imagestore.lock_not_released", error=repr(exc))
