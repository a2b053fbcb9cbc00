"""API keys: generated here, shown once, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets


def new_api_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What is stored and looked up instead of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
