"""Authentication of API requests (reference §4.1): the ``ES-API-KEY`` header.

Every failure is a 403 with the original's message. A resolved key is cached for
``auth_cache_seconds`` per process, so a revoked key stops working within that bound.
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from services.gateway.http import ApiError
from services.gateway.queries import Queries
from shared.db.records import UserRecord
from shared.keys import key_digest

NO_CREDENTIALS = "Authentication credentials were not provided."
INVALID_KEY = "Invalid API key"
NO_API_ACCESS = "User account is not allowed to access API"


class Authenticator:
    def __init__(self, queries: Queries, *, cache_seconds: float):
        self._queries = queries
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, UserRecord | None]] = {}

    async def user(self, request: Request) -> UserRecord:
        """The authenticated user; also records who asked on ``request.state``. Raises ApiError(403)."""
        key = request.headers.get("es-api-key")
        if not key:
            raise ApiError(403, NO_CREDENTIALS)
        user = await self._lookup(key_digest(key))
        if user is None or not user.is_active:
            raise ApiError(403, INVALID_KEY)
        if not user.api_access:
            raise ApiError(403, NO_API_ACCESS)
        request.state.username = user.username
        request.state.user_id = user.id
        return user

    async def _lookup(self, digest: str) -> UserRecord | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await run_in_threadpool(self._queries.user_by_key_digest, digest)
        if user is not None and self._cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, user)
        return user
