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


def test_every_package_of_the_repository_is_installed_under_imagesvc():
    """The distribution installs one top-level package, ``imagesvc``: each folder of client/,
    shared/, services/, domain/ and imagesvc/ that is a package is listed, mapped into that namespace."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    wanted = {"imagesvc.migrations"}
    for top in ("imagesvc", "client", "shared", "services", "domain"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            wanted.add(".".join(parts) if top == "imagesvc" else ".".join(("imagesvc", *parts)))
    assert listed == wanted, (sorted(wanted - listed), sorted(listed - wanted))
    assert {name.split(".")[0] for name in listed} == {"imagesvc"}
    assert setuptools["package-dir"] == {"imagesvc": "imagesvc", "imagesvc.client": "client", "imagesvc.shared": "shared",
                                         "imagesvc.services": "services", "imagesvc.domain": "domain",
                                         "imagesvc.migrations": "alembic"}


def test_the_code_imports_its_packages_through_the_imagesvc_namespace():
    """``import shared`` would work in a checkout only: every import names ``imagesvc.shared``."""
    import re

    stray = re.compile(r"^\s*(from|import) (client|shared|services|domain)(\.|\s|$)", re.M)
    found = [str(path.relative_to(ROOT)) for top in ("imagesvc", "client", "shared", "services", "domain", "alembic", "tests",
                                                     "bench")
             for path in (ROOT / top).rglob("*.py") if stray.search(path.read_text())]
    assert not found, found
