"""Authentication of API requests (reference §4.1): the ``ES-API-KEY`` header, then
``Authorization: Token <token>`` (a token from ``POST /api/accounts/login/``).

Every failure is a 403 with the original's message; an expired token counts as no credentials.
A resolved key or token is cached by ``Queries`` for ``auth_cache_seconds`` per process, so a
revoked key stops working within that bound.
"""

from __future__ import annotations

from starlette.requests import Request

from imagesvc.services.gateway.blocking import in_thread
from imagesvc.services.gateway.http import ApiError
from imagesvc.services.gateway.queries import Queries
from imagesvc.shared.db.models import utcnow
from imagesvc.shared.db.records import UserRecord
from imagesvc.shared.keys import key_digest

NO_CREDENTIALS = "Authentication credentials were not provided."
INVALID_KEY = "Invalid API key"
NO_API_ACCESS = "User account is not allowed to access API"
INVALID_TOKEN = "Invalid token."
INACTIVE = "User inactive or deleted."


class Authenticator:
    """``throttle``: checked once the user is known and may use the API, before any permission of
    the endpoint (the original's order: authentication, API access, throttling, then the view)."""

    def __init__(self, queries: Queries, throttle=None):
        self._queries = queries
        self._throttle = throttle

    async def user(self, request: Request) -> UserRecord:
        """The authenticated user; also records who asked on ``request.state``. Raises ApiError(403)."""
        key = request.headers.get("es-api-key")
        if key:
            user = await self._lookup(key_digest(key))
            if user is None or not user.is_active:
                raise ApiError(403, INVALID_KEY)
        else:
            user = await self._token_user(request)
        if not user.api_access:
            raise ApiError(403, NO_API_ACCESS)
        if self._throttle is not None:
            self._throttle.check(("user", user.id))
        request.state.username = user.username
        request.state.user_id = user.id
        return user

    async def _token_user(self, request: Request) -> UserRecord:
        words = request.headers.get("authorization", "").split()
        if not words or words[0].lower() != "token":
            raise ApiError(403, NO_CREDENTIALS)
        if len(words) == 1:
            raise ApiError(403, "Invalid token header. No credentials provided.")
        if len(words) > 2:
            raise ApiError(403, "Invalid token header. Token string should not contain spaces.")
        digest = key_digest(words[1])
        found = self._queries.cached_user_by_token_digest(digest) or await in_thread(
            self._queries.user_by_token_digest, digest)
        if found is None:
            raise ApiError(403, INVALID_TOKEN)
        user, expires_at = found
        if not user.is_active:
            raise ApiError(403, INACTIVE)
        if expires_at <= utcnow():
            raise ApiError(403, NO_CREDENTIALS)  # an expired token is no credential at all
        request.state.token_digest = digest
        return user

    async def _lookup(self, digest: str) -> UserRecord | None:
        # A cache hit needs no trip to the thread pool.
        cached = self._queries.cached_user_by_key_digest(digest)
        return cached or await in_thread(self._queries.user_by_key_digest, digest)
