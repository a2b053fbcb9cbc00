"""Import boundaries between the packages, checked on the source's AST.

* ``shared`` never imports ``services``, ``domain`` or ``imagesvc``, nor HTTP server code
  (Starlette, uvicorn, httptools: the HTTP edge is ``imagesvc/edge.py``'s);
* ``domain`` never imports ``services``, ``imagesvc``, kombu, pika, SQLAlchemy or Starlette;
* a service never imports another service;
* nothing under ``services/`` or ``domain/`` imports kombu or pika;
* only ``shared/db/``, ``alembic/``, ``services/gateway/queries.py``,
  ``services/projector/handlers.py`` and the composition root ``imagesvc/`` import SQLAlchemy;
* ``client`` (the SDK a user installs) imports of ours only ``shared``'s contracts, errors and
  broker topology, never the services, ``domain``, ``imagesvc`` or the server's libraries
  (SQLAlchemy, psycopg, Starlette, uvicorn, Alembic), and only ``client/broker.py`` imports kombu.

Imports under ``if TYPE_CHECKING:`` are for type checkers only and are not counted.

"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "domain", "services", "imagesvc", "client")
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if p.is_dir() and (p / "__init__.py").exists())
SQLALCHEMY_ALLOWED = ("shared/db/", "alembic/", "services/gateway/queries.py", "services/projector/handlers.py",
                      "imagesvc/")


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository root, with forward slashes
    line: int
    modules: tuple[str, ...]  # the module and, for ``from m import n``, also ``m.n``
    base: str  # the module named by the statement
    names: tuple[str, ...]  # names of ``from m import ...``; empty for ``import m``
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(path: Path, level: int, module: str | None) -> str:
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([module] if module else []))


def _canonical(module: str) -> str:
    """The package a module lives in as the repository lays it out: ``imagesvc.shared.x`` (the
    installed namespace the folders are mapped into) is ``shared.x``."""
    head, _, rest = module.partition(".")
    if head == "imagesvc" and rest.split(".")[0] in ("shared", "services", "domain", "client"):
        return rest
    return module


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    found = []
    type_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = _canonical(alias.name)
                found.append(Import(rel, node.lineno, (name,), name, (), f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            base = _canonical(_resolve_relative(path, node.level, node.module) if node.level else (node.module or ""))
            names = tuple(alias.name for alias in node.names)
            modules = (base,) + tuple(f"{base}.{n}" for n in names if n != "*")
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
            found.append(Import(rel, node.lineno, modules, base, names, text))
    return found


def source_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return files


def _top(module: str) -> str:
    return module.split(".")[0]


def _touches(imp: Import, *packages: str) -> bool:
    return any(_top(m) in packages for m in imp.modules)


# --- the rules -------------------------------------------------------------------------------------


def shared_layering(imp: Import) -> bool:
    return imp.path.startswith("shared/") and _touches(imp, "services", "domain", "imagesvc")


def shared_without_http_server(imp: Import) -> bool:
    return imp.path.startswith("shared/") and _touches(imp, "starlette", "uvicorn", "httptools")


def domain_purity(imp: Import) -> bool:
    return imp.path.startswith("domain/") and _touches(
        imp, "services", "imagesvc", "kombu", "pika", "sqlalchemy", "starlette"
    )


def service_isolation(imp: Import) -> bool:
    parts = imp.path.split("/")
    if parts[0] != "services" or len(parts) < 3:
        return False
    own = parts[1]
    for module in imp.modules:
        segments = module.split(".")
        if segments[0] == "services" and len(segments) > 1 and segments[1] in SERVICES and segments[1] != own:
            return True
    return False


def no_broker_client_in_services_or_domain(imp: Import) -> bool:
    return imp.path.startswith(("services/", "domain/")) and _touches(imp, "kombu", "pika")


def sqlalchemy_confined(imp: Import) -> bool:
    if not _touches(imp, "sqlalchemy"):
        return False
    return not imp.path.startswith(SQLALCHEMY_ALLOWED)


#: What of ``shared/`` the SDK may use: the message contract and what it needs to speak it.
CLIENT_MAY_USE = ("shared.contracts", "shared.errors", "shared.broker.topology")


def client_stays_a_client(imp: Import) -> bool:
    if not imp.path.startswith("client/"):
        return False
    if _touches(imp, "services", "domain", "imagesvc", "sqlalchemy", "psycopg", "starlette", "uvicorn", "alembic"):
        return True
    if imp.path != "client/broker.py" and _touches(imp, "kombu", "amqp", "pika"):
        return True
    named = [m for m in imp.modules if m != "shared"]  # ``from imagesvc.shared import contracts``
    return _top(imp.base) == "shared" and not all(m.startswith(CLIENT_MAY_USE) for m in named)


RULES = {
    "shared never imports services, domain or imagesvc": shared_layering,
    "shared never imports starlette, uvicorn or httptools": shared_without_http_server,
    "domain never imports services, imagesvc, kombu, pika, sqlalchemy or starlette": domain_purity,
    "a service never imports another service": service_isolation,
    "nothing under services/ or domain/ imports kombu or pika": no_broker_client_in_services_or_domain,
    "only shared/db, alembic, gateway queries, projector handlers and imagesvc import sqlalchemy": sqlalchemy_confined,
    "client imports only shared's contract, errors and topology, and no server library": client_stays_a_client,
}



@functools.cache
def _parsed(path: Path) -> tuple[Import, ...]:
    """Each source file is parsed once for all the rules."""
    return tuple(imports_of(path))


def violations(rule_name: str) -> list[Import]:
    check = RULES[rule_name]
    return [imp for path in source_files() for imp in _parsed(path) if check(imp)]


# --- tests -----------------------------------------------------------------------------------------


def test_the_packages_and_services_exist():
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").exists(), package
    assert {"gateway", "image_server", "importer", "updater", "deleter", "projector"} <= set(SERVICES)


def test_import_collector_sees_plain_from_and_nested_imports(tmp_path, monkeypatch):
    # The rule tests are only as good as the collector: prove it on a fixture module.
    fake = tmp_path / "mod.py"
    fake.write_text(
        "import os.path, json\n"
        "from shared.contracts import Actor, Envelope\n"
        "def f():\n"
        "    from sqlalchemy import select\n"
        "    import kombu.messaging\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    collected = sorted(imports_of(fake), key=lambda i: (i.line, i.modules))
    assert [(i.line, i.modules) for i in collected] == [
        (1, ("json",)),
        (1, ("os.path",)),
        (2, ("shared.contracts", "shared.contracts.Actor", "shared.contracts.Envelope")),
        (4, ("sqlalchemy", "sqlalchemy.select")),
        (5, ("kombu.messaging",)),
    ]
    assert str(collected[2]) == "mod.py:2: from shared.contracts import Actor, Envelope"


def test_relative_imports_resolve_against_the_package(tmp_path, monkeypatch):
    (tmp_path / "services" / "importer").mkdir(parents=True)
    module = tmp_path / "services" / "importer" / "handlers.py"
    module.write_text("from ..gateway import routes\nfrom . import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    collected = imports_of(module)
    assert collected[0].modules == ("services.gateway", "services.gateway.routes")
    assert service_isolation(collected[0]) is True
    assert collected[1].modules == ("services.importer", "services.importer.x")
    assert service_isolation(collected[1]) is False


@pytest.mark.parametrize(
    "path, text, rule",
    [
        ("shared/x.py", "from domain import images", shared_layering),
        ("shared/x.py", "import imagesvc.bootstrap", shared_layering),
        ("shared/x.py", "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
         shared_without_http_server),
        ("shared/x.py", "from starlette.responses import Response", shared_without_http_server),
        ("domain/x.py", "from starlette.requests import Request", domain_purity),
        ("domain/x.py", "import sqlalchemy", domain_purity),
        ("services/updater/handlers.py", "from services.importer import handlers", service_isolation),
        ("services/updater/handlers.py", "from services import importer", service_isolation),
        ("services/updater/handlers.py", "import pika", no_broker_client_in_services_or_domain),
        ("services/gateway/routes.py", "from sqlalchemy import select", sqlalchemy_confined),
        ("services/gateway/app.py", "from sqlalchemy import Engine, select", sqlalchemy_confined),
        ("services/gateway/app.py", "import sqlalchemy", sqlalchemy_confined),
        ("services/gateway/app.py", "from sqlalchemy.orm import Session", sqlalchemy_confined),
    ],
)
def test_each_rule_catches_its_violation(tmp_path, monkeypatch, path, text, rule):
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [rule(imp) for imp in imports_of(target)] == [True]


@pytest.mark.parametrize(
    "path, text",
    [
        ("shared/db/models.py", "from sqlalchemy import Integer"),
        ("services/gateway/queries.py", "from sqlalchemy import select"),
        ("services/projector/handlers.py", "from sqlalchemy import Connection"),
        ("shared/relay.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Engine"),
        ("imagesvc/cli.py", "from sqlalchemy.engine import make_url"),
        ("services/gateway/routes.py", "from services.gateway.http import ApiError"),
        ("services/gateway/routes.py", "from shared.contracts import Actor"),
        ("domain/images.py", "from shared.db.records import ImageRecord"),
        ("imagesvc/bootstrap.py", "from kombu import Connection"),
        ("imagesvc/edge.py", "from uvicorn.server import ServerState"),
    ],
)
def test_allowed_imports_pass_every_rule(tmp_path, monkeypatch, path, text):
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for imp in imports_of(target):
        assert not any(rule(imp) for rule in RULES.values()), (str(imp), imp.modules)


@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_holds_for_every_module(rule_name):
    found = violations(rule_name)
    assert not found, f"{rule_name}:\n" + "\n".join(f"  {imp}" for imp in found)
