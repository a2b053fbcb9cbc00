"""Secrets: API keys and login tokens (generated here, shown once, stored only as a SHA-256
digest) and passwords (stored as a slow, salted hash)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_api_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What is stored and looked up instead of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- passwords ---------------------------------------------------------------------------------
# scrypt (RFC 7914, in the standard library through OpenSSL): slow and memory-hard by design.
# Stored as "scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>", so the cost can be raised later
# without invalidating existing hashes.

_SCRYPT = (2**14, 8, 1)


def hash_password(password: str) -> str:
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (False for no or an unreadable hash)."""
    try:
        scheme, n, r, p, salt, expected = (stored or "").split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))
