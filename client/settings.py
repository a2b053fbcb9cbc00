"""Where the command line finds the API, its credentials and the broker: options, then the
environment, then a profile file.

The profile file is JSON, ``$IMAGESVC_CLIENT_CONFIG`` or ``$XDG_CONFIG_HOME/imagesvc/profiles.json``
(``~/.config/imagesvc/profiles.json``): ``{"<profile>": {"url", "api_key", "token", "broker_url"}}``.
It may hold a token or an API key, so it is written with mode 0600 in a directory of mode 0700,
atomically (a reader never sees half a file), and a file that others can read is refused rather
than believed.

Environment (each overrides the profile): ``IMAGESVC_CLIENT_URL``, ``IMAGESVC_CLIENT_API_KEY``,
``IMAGESVC_CLIENT_TOKEN``, ``IMAGESVC_CLIENT_BROKER_URL``, ``IMAGESVC_CLIENT_PROFILE`` (the
profile's name, ``default`` unless set). A broker URL may list the nodes of a RabbitMQ cluster,
``;``-separated (``client.broker.Broker`` fails over between them). The server's own
``IMAGESVC_*`` settings are not read:
a user's shell and an operator's service are configured apart.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

DEFAULT_PROFILE = "default"
DEFAULT_URL = "http://127.0.0.1:8000"
_FIELDS = ("url", "api_key", "token", "broker_url")


class ProfileError(Exception):
    """The profile file cannot be used (unreadable, not JSON, readable by others)."""


@dataclass(frozen=True)
class ClientSettings:
    profile: str = DEFAULT_PROFILE
    url: str = DEFAULT_URL
    api_key: str | None = None
    token: str | None = None
    broker_url: str | None = None

    def credentials(self) -> dict[str, str]:
        """Keyword arguments for ``Client``: a token wins over an API key (it is what ``login`` gave)."""
        if self.token:
            return {"token": self.token}
        if self.api_key:
            return {"api_key": self.api_key}
        return {}


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("IMAGESVC_CLIENT_CONFIG"):
        return Path(environ["IMAGESVC_CLIENT_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "imagesvc" / "profiles.json"


def _read_profiles(path: Path) -> dict[str, dict[str, Any]]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ProfileError(f"{path} is readable by other users (mode {stat.filemode(info.st_mode)}): "
                           f"it may hold credentials; run `chmod 600 {path}`")
    try:
        profiles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ProfileError(f"{path} is not an object of profiles")
    return profiles


def _same_server(a: str, b: str) -> bool:
    """Whether two API URLs name the same server (``/api`` and a trailing slash aside)."""
    def normal(url: str) -> str:
        url = url.strip().rstrip("/")
        return url[: -len("/api")] if url.endswith("/api") else url
    return normal(a).lower() == normal(b).lower()


def resolve(*, profile: str | None = None, url: str | None = None, broker_url: str | None = None,
            environ: Mapping[str, str] = os.environ) -> ClientSettings:
    """The settings for one command: its options, then the environment, then the profile file.

    A credential kept in the profile (a token, an API key) belongs to the profile's server: it is
    used only while the URL in effect, wherever it comes from, is that server's (a profile
    without a URL stands for the default one). Credentials from the environment are the user's
    explicit choice for this command and are always used."""
    name = profile or environ.get("IMAGESVC_CLIENT_PROFILE") or DEFAULT_PROFILE
    stored = _read_profiles(config_path(environ)).get(name, {})
    values: dict[str, Any] = {k: stored.get(k) for k in _FIELDS if isinstance(stored.get(k), str)}
    home = values.get("url") or DEFAULT_URL
    for field in _FIELDS:
        value = environ.get(f"IMAGESVC_CLIENT_{field.upper()}")
        if value:
            values[field] = value
    if url:
        values["url"] = url
    if broker_url:
        values["broker_url"] = broker_url
    if not _same_server(values.get("url") or DEFAULT_URL, home):
        for credential in ("token", "api_key"):
            if not environ.get(f"IMAGESVC_CLIENT_{credential.upper()}"):
                values.pop(credential, None)
    return replace(ClientSettings(profile=name), **{k: v for k, v in values.items() if v})


def save(profile: str, changes: Mapping[str, str | None], environ: Mapping[str, str] = os.environ) -> Path:
    """Merge ``changes`` into ``profile`` (a None value removes the field) and write the file
    with mode 0600, atomically. Returns its path."""
    path = config_path(environ)
    profiles = _read_profiles(path)
    entry = {k: v for k, v in profiles.get(profile, {}).items() if k in _FIELDS}
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    profiles[profile] = entry
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".profiles-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(profiles, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
