"""compose.yaml and the Dockerfile, read (Docker does not run here): every service has a
healthcheck, the imagesvc ones ask their own probes with ``imagesvc health``; secrets come from
``.env`` without defaults; one store volume, owned by the image's non-root user; RabbitMQ and
PostgreSQL not published beyond this machine; a node agent; the documented SuperAdmin one-liner
is a real command. And a compose linter (Debian's ``docker-compose`` v1, whose ``config`` needs no
daemon) accepts the file with ``.env.example`` as its env file: skipped where it is not
installed, failed under CI=true (``.ci/run`` installs it)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.services import CI

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DOC = ROOT / "docs" / "compose.md"

STORE = "/srv/images"
#: The services that read or write the image store: they must all mount the same volume there.
STORE_USERS = ("importer", "updater", "deleter", "image-server", "node-agent")
#: Variables that hold credentials (by name).
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY", re.IGNORECASE)
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?message}``, ``${NAME?message}``.
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<rest>[^}]*)\}")
LOOPBACK = ("127.0.0.1", "::1", "[::1]")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]


def one_shots(all_services: dict) -> set[str]:
    """Services another one waits for to exit 0 (``service_completed_successfully``)."""
    found = set()
    for service in all_services.values():
        depends = service.get("depends_on") or {}
        if isinstance(depends, dict):
            found |= {name for name, how in depends.items()
                      if (how or {}).get("condition") == "service_completed_successfully"}
    return found


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's volumes, short or long syntax."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            found.append((entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
            continue
        parts = entry.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        options = parts[2].split(",") if len(parts) > 2 else []
        found.append((source, target, "ro" in options))
    return found


def published(service: dict) -> list[tuple[str, str]]:
    """(host address, container port) of each published port; "" for all addresses."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append((entry.get("host_ip", ""), str(entry["target"])))
            continue
        text = str(entry)
        if text.startswith("["):  # [::1]:15672:15672
            address, _, rest = text[1:].partition("]:")
            found.append((address, rest.split(":")[-1]))
            continue
        parts = text.split(":")
        found.append((parts[0] if len(parts) == 3 else "", parts[-1]))
    return found


# --- healthchecks ----------------------------------------------------------------------------


def test_every_imagesvc_service_has_a_healthcheck_on_its_probes():
    services_ = services()
    ours = {name: service for name, service in services_.items()
            if service.get("build") and name not in one_shots(services_)}
    assert {"gateway", "importer", "updater", "deleter", "projector", "image-server", "node-agent"} <= set(ours)
    for name, service in ours.items():
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "imagesvc", "health"], (name, test)
        if service["command"][0] in ("worker", "node-agent"):  # no HTTP port of their own
            assert test[3] == "local" and service["environment"]["IMAGESVC_HEALTH_PORT"], name
        else:
            port = service["command"][service["command"].index("--port") + 1]
            assert test[3] == f"http://127.0.0.1:{port}", name


def test_every_long_running_service_has_a_healthcheck():
    services_ = services()
    shots = one_shots(services_)
    assert shots == {"migrate"}, "only the migration may run once and exit"
    for name, service in services_.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in shots:
            # Its exit code is its health; said explicitly, and it must not be restarted.
            assert check.get("disable") is True and service.get("restart", "no") == "no", name
            continue
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
        assert service.get("restart") in ("unless-stopped", "always"), name


# --- secrets -------------------------------------------------------------------------------


def test_secrets_come_from_the_env_file_and_have_no_default():
    text = COMPOSE.read_text()
    secrets = {m["name"] for m in SUBSTITUTION.finditer(text) if SECRET_NAME.search(m["name"])}
    assert {"RABBITMQ_PASSWORD", "POSTGRES_PASSWORD"} <= secrets
    for m in SUBSTITUTION.finditer(text):
        if SECRET_NAME.search(m["name"]):
            # `:?` fails when unset or empty; a default (`:-`, `-`) or a bare ${X} would start
            # with a known or an empty password.
            assert m["op"] == ":?" and m["rest"].strip(), f"{m.group(0)}: use ${{{m['name']}:?message}}"
    assert "$$" not in text


def test_no_fixed_credentials_in_the_services():
    for name, service in services().items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), name
        for key, value in environment.items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (name, key, value)
            userinfo = re.match(r"^[a-z][a-z0-9+.-]*://([^/@]*)@", value)
            if userinfo:  # a URL with credentials: its password must be a substitution
                user, _, password = userinfo.group(1).partition(":")
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), (name, key, value)


def test_env_example_names_every_required_variable_with_placeholders():
    required = {m["name"] for m in SUBSTITUTION.finditer(COMPOSE.read_text()) if m["op"] in (":?", "?")}
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            example[key.strip()] = value.strip()
    assert required <= set(example), required - set(example)
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value.startswith("change-me"), f".env.example must hold placeholders, not {key}={value}"
            assert re.fullmatch(r"[A-Za-z0-9-]+", value), key  # it goes into URLs as it is
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert ignored.returncode == 0, ".env must be in .gitignore"


# --- the store, the ports, the node agent -------------------------------------------------------


def test_one_store_volume_for_every_service_that_uses_the_store():
    document = compose()
    services_ = document["services"]
    sources = {}
    for name in STORE_USERS:
        at_store = [(source, read_only) for source, target, read_only in mounts(services_[name]) if target == STORE]
        assert len(at_store) == 1, f"{name} mounts nothing (or twice) at {STORE}"
        source, read_only = at_store[0]
        # The image server writes too: its Content-MD5 cache and its health check's probe file.
        assert not read_only, f"{name} writes the store"
        assert services_[name]["environment"]["IMAGESVC_IMAGE_STORE"] == STORE, name
        sources[name] = source
    assert len(set(sources.values())) == 1, sources
    volume = next(iter(sources.values()))
    assert volume in (document.get("volumes") or {}), f"{volume} is not a named volume"


def test_rabbitmq_and_postgres_are_not_published_beyond_this_machine():
    services_ = services()
    for name in ("rabbitmq", "postgres"):
        assert services_[name].get("network_mode") != "host", name
        for address, port in published(services_[name]):
            assert address in LOOPBACK, f"{name} publishes {port} on every address"


def test_a_node_agent_with_its_snapshot_directory():
    agent = services()["node-agent"]
    command = agent["command"]
    assert command[0] == "node-agent" and command[command.index("--node") + 1], command
    environment = agent["environment"]
    assert environment.get("IMAGESVC_SNAPSHOT_DRIVER", "file") == "file"
    snapshot_dir = environment["IMAGESVC_SNAPSHOT_DIR"]
    at_dir = [read_only for _source, target, read_only in mounts(agent) if target == snapshot_dir]
    assert at_dir == [True], "the snapshot directory is mounted once, read-only"
    assert agent["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_the_superadmin_one_liner_is_documented_and_a_real_command():
    from imagesvc.cli import _parser

    line = re.compile(r"docker compose run --rm (?P<service>[a-z-]+) (?P<args>admin create-superadmin [a-z0-9_-]+)")
    found = line.search(COMPOSE.read_text())
    assert found, "compose.yaml's comment must give the SuperAdmin one-liner"
    assert found.group(0) in COMPOSE_DOC.read_text(), "docs/compose.md must give the same one-liner"
    service = services()[found["service"]]
    # It runs after the migration, with the database's credentials.
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "IMAGESVC_DATABASE_URL" in service["environment"]
    args = _parser().parse_args(shlex.split(found["args"]))
    assert args.func.__name__ == "_create_superadmin" and args.username


# --- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or (not raw.strip() and not current):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def test_the_image_runs_as_a_dedicated_user_that_owns_the_store():
    instructions = dockerfile_instructions()
    users = [(index, args.strip()) for index, (op, args) in enumerate(instructions) if op == "USER"]
    assert users, "the Dockerfile has no USER: its processes would run as root"
    user_at, user = users[-1]
    name = user.split(":")[0]
    assert name not in ("root", "0", "nobody", "65534"), f"USER {user}"
    runs = [(index, args) for index, (op, args) in enumerate(instructions) if op == "RUN"]
    uids = {}  # user name -> uid, from useradd/adduser
    for _index, args in runs:
        for m in re.finditer(r"(?:useradd|adduser)\b([^;&|]*)", args):
            words = m.group(1).split()
            uid = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--uid", "-u")), None)
            created = next((w for w in reversed(words) if not w.startswith("-")), None)
            if created:
                uids[created] = uid
    assert name.isdigit() or name in uids, f"USER {name} is not created in the image"
    uid = name if name.isdigit() else uids[name]
    assert uid and uid.isdigit() and int(uid) != 0, f"{name} needs a fixed uid other than 0 (got {uid})"
    owners = {name, uid}
    chowned = False
    for index, args in runs:
        for m in re.finditer(r"\bchown\b([^;&|]*)", args):
            words = [w for w in m.group(1).split() if not w.startswith("-")]
            if STORE in words[1:] and words[0].split(":")[0] in owners:
                assert index < user_at, "the chown must run before USER switches away from root"
                chowned = True
    assert chowned, f"{STORE} is not chowned to {name} in the image"
    assert ("ENTRYPOINT", '["imagesvc"]') in instructions


# --- the linter ---------------------------------------------------------------------------------


def linter() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        message = "docker-compose (Debian's package, v1) is not installed: the compose linter cannot run"
        if CI:
            pytest.fail(message + " and CI=true requires it (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return path


def lint(env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    # A clean environment: variables of the caller's shell must not stand in for the env file.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [linter(), "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)


def test_the_compose_linter_accepts_the_file_with_the_example_env(tmp_path):
    result = lint(ENV_EXAMPLE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_linter_refuses_a_missing_secret(tmp_path):
    partial = tmp_path / "partial.env"
    partial.write_text("".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                               if not line.startswith("POSTGRES_PASSWORD=")))
    result = lint(partial, tmp_path)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr, result.stderr
