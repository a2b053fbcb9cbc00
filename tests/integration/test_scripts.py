"""The README's scripts as a user runs them: ``scripts/serve`` passes its arguments to
``imagesvc serve`` (they once reached pip as an "extra"), and a start needs no network once
``.venv`` holds the project (the install runs again only when pyproject.toml changed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / "serve"), *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_serve_takes_its_own_arguments_and_starts_without_network():
    first = serve("--host", "127.0.0.1", "--port", "9000", "--help")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("usage: imagesvc serve"), first.stdout
    # No package index reachable: an install attempt would fail, so none may happen.
    offline = serve("--host", "0.0.0.0", "--port", "9000", "--help", PIP_NO_INDEX="1",
                    PIP_INDEX_URL="http://127.0.0.1:9/simple")
    assert offline.returncode == 0, offline.stderr
    assert "installing the project into .venv failed" not in offline.stderr
    assert "--host HOST" in offline.stdout
