"""What installing imagesvc brings: only what its processes run (test tools are the ``test``
extra's)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_runtime_dependencies_are_only_what_runs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    assert not runtime & {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "pika"}, runtime
    assert {"pytest", "pika"} <= _names(project["optional-dependencies"]["test"])


def test_no_stray_wheels_or_archives_in_the_repository():
    assert not [path.name for path in ROOT.glob("*.whl")] + [path.name for path in ROOT.glob("*.tar.gz")]
