"""The README's commands work as written.

Every ``imagesvc`` command line the README shows names subcommands and options that exist (checked
against the real parser). The blocks marked ``<!-- docs-test: ... -->`` are run by bash, as a
user would paste them: the first screen's ``serve``, import, look and delete (embedded), and the distributed
recipe against RabbitMQ and PostgreSQL, followed by the same import, look and delete.

What the test changes in a block, and only that: ports (8000, 8080, 8765) become free ones;
``/srv/images``, ``/srv/vms``, ``/tmp/imagesvc-demo`` and ``var/`` become directories of the test
(``IMAGESVC_DATA_DIR`` points ``serve`` there), so a developer's own ``./var`` is never touched;
the distributed recipe's database gets a name of its own, its queues a topology prefix, and its
importer an ``IMAGESVC_FETCH_ALLOW`` for the loopback origin (the recipe fetches from the
internet; the test has none); the API key that ``create-superadmin`` prints is kept where the
import block reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imagesvc.cli import _parser
from tests.support.polling import eventually
from tests.support.services import delete_queues, drop_database, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_TAG = re.compile(r"^<!-- docs-test: ([a-z-]+)")


@dataclass(frozen=True)
class Block:
    line: int
    text: str
    tag: str | None


def blocks(doc: Path = README) -> list[Block]:
    """The indented code blocks of ``doc``, each with the ``docs-test`` tag that precedes it."""
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    index, tag = 0, None
    while index < len(lines):
        line = lines[index]
        match = _TAG.match(line)
        if match:
            tag = match.group(1)
        starts_block = line.startswith("    ") and (index == 0 or not lines[index - 1].strip())
        if starts_block and not line.lstrip().startswith(("|", "-", "*")):
            body = []
            while index < len(lines) and (lines[index].startswith("    ") or not lines[index].strip()):
                body.append(lines[index][4:])
                index += 1
            found.append(Block(index - len(body) + 1, "\n".join(body).strip("\n"), tag))
            tag = None
            continue
        if line.strip() and not match:
            tag = None if line.startswith("#") else tag
        index += 1
    return found


def tagged(tag: str) -> Block:
    matching = [block for block in blocks() if block.tag == tag]
    assert len(matching) == 1, f"README has {len(matching)} blocks tagged {tag!r}"
    return matching[0]


# --- every imagesvc line names commands and options that exist ------------------------------


def _commands(doc: Path = README) -> list[tuple[int, list[str]]]:
    """(line, tokens from ``imagesvc`` on) of every command line in a code block of ``doc`` (lines
    continued with a backslash joined) and of every inline `imagesvc ...` in its prose."""
    candidates: list[tuple[int, str]] = []
    for block in blocks(doc):
        joined = block.text.replace("\\\n", " ")
        candidates += [(block.line + offset, line) for offset, line in enumerate(joined.splitlines())]
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        if not line.startswith("    "):
            candidates += [(number, code) for code in re.findall(r"`(imagesvc [^`]+)`", line)]
    found = []
    for line_number, line in candidates:
        code = line.split("  #")[0].split(" (")[0]
        try:
            tokens = shlex.split(code, comments=True)
        except ValueError:
            continue
        while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
            tokens = tokens[1:]  # VAR=value before the command
        if tokens[:1] == ["imagesvc"]:
            found.append((line_number, tokens[1:]))
    return found


DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_imagesvc_command_the_docs_show_exists_with_its_options(doc):
    commands = _commands(doc)
    if doc == README:
        assert len(commands) >= 40, commands  # the README documents that many; a parse that finds few is broken
    for line, tokens in commands:
        parser: argparse.ArgumentParser = _parser()
        path = []
        for token in tokens:
            subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
            if not subparsers or token.startswith(("-", "<", "[", "...")) or token.isupper():
                break  # an option, or a placeholder for a command (`imagesvc admin vm ...`)
            choices = subparsers[0].choices
            alternatives = token.split("|")
            assert all(choice in choices for choice in alternatives), \
                f"{doc.name} line {line}: `imagesvc {' '.join(path + [token])}` is no command (choices: {sorted(choices)})"
            parser = choices[alternatives[0]]
            path.append(token)
        known = {option for action in parser._actions for option in action.option_strings}
        for token in tokens[len(path):]:
            option = token.lstrip("[").split("=")[0].rstrip(".]")
            if option.startswith("--"):
                assert option in known, f"{doc.name} line {line}: `imagesvc {' '.join(path)}` has no option {option}"


# --- the marked blocks, run by bash --------------------------------------------------------


def _bash(script: str, *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _substituted(text: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        text = text.replace(old, new)
    return text


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `imagesvc` as README says
    env["IMAGESVC_DATA_DIR"] = str(tmp_path / "var")
    env["IMAGESVC_LOG_FORMAT"] = "json"
    return env


def _answers(url: str) -> None:
    try:
        answer = httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        raise AssertionError(f"{url}: {exc}") from None
    assert answer.status_code == 200, answer.text


def _import_then_check(tmp_path: Path, subs: dict[str, str], env: dict[str, str], api: str) -> None:
    """Run the README's import block; it must end SUCCESS and the image must be listed."""
    script = _substituted(tagged("import").text, subs)
    done = subprocess.run(["bash", "-c", script + "\nstatus=$?; kill %1 2>/dev/null; exit $status"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180, start_new_session=True)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert '"status":"SUCCESS"' in last and "Successfully imported image tiny" in last, done.stdout
    key = (tmp_path / "var" / "admin.key").read_text().strip()
    listed = httpx.get(f"{api}/image/", headers={"ES-API-KEY": key}, timeout=30).json()
    assert "tiny" in listed["result"], listed


def _json_values(text: str) -> list:
    """The JSON values written one after another in ``text`` (whitespace between them or not)."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    return values


def _watch_then_delete(tmp_path: Path, subs: dict[str, str], env: dict[str, str], api: str) -> None:
    """Run the README's block that shows the image and deletes it: shown, then gone."""
    done = subprocess.run(["bash", "-c", _substituted(tagged("watch-and-delete").text, subs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    # The show's answer ends without a newline, and a delete that ends before the stream's first
    # keep-alive line is one line: the two answers may share a line, so read them as JSON values.
    answers = _json_values(done.stdout)
    shown, deleted = answers[0], answers[-1]
    assert len(answers) >= 2 and shown["status"] == "SUCCESS" and shown["result"]["name"] == "tiny", done.stdout
    assert deleted["status"] == "SUCCESS" and "Successfully deleted image tiny" in deleted["result"]["message"], \
        done.stdout
    key = (tmp_path / "var" / "admin.key").read_text().strip()
    listed = httpx.get(f"{api}/image/", headers={"ES-API-KEY": key}, timeout=30).json()
    assert "tiny" not in listed["result"], listed


#: README commands that only look: run as shown against the distributed recipe's system.
_LOOKING = ("health", "dlq list", "store check", "config show", "admin user list", "admin dc list",
            "admin role list", "admin node list", "admin vm list", "admin vm snapshot list")


def _exported(script: str) -> dict[str, str]:
    """The variables a script's ``export NAME=value`` lines set."""
    return dict(re.findall(r"^export (IMAGESVC_[A-Z0-9_]+)=(\S+)", script, re.M))


def _read_only_commands_succeed(env: dict[str, str], subs: dict[str, str], cwd: Path) -> set[str]:
    """Run every README command line that only looks and names no placeholder; each must exit 0.
    Returns which kinds ran."""
    ran = set()
    for line, tokens in _commands():
        kind = next((k for k in _LOOKING if " ".join(tokens).startswith(k)), None)
        if kind is None or any(token.startswith(("<", "[")) or token.isupper() or token == "&" for token in tokens):
            continue
        if tokens == ["health", "local"]:
            continue  # asks the worker the README starts on the line before, with a port of its own
        argv = ["imagesvc", *(_substituted(token, subs) for token in tokens)]
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"README line {line}: {' '.join(argv)}: {done.stdout}{done.stderr}"
        ran.add(kind)
    return ran


def _subs(tmp_path: Path, api_port: int, origin_port: int) -> dict[str, str]:
    return {"127.0.0.1:8000": f"127.0.0.1:{api_port}", "8765": str(origin_port),
            "/tmp/imagesvc-demo": str(tmp_path / "demo"), "var/admin.key": str(tmp_path / "var" / "admin.key")}


def test_the_first_screen_serves_and_imports_an_image(tmp_path):
    api_port, origin_port = free_port(), free_port()
    subs = _subs(tmp_path, api_port, origin_port)
    env = _environment(tmp_path)
    start = _substituted(tagged("start-embedded").text, subs).replace("./scripts/serve", f"./scripts/serve --port {api_port}")
    serve = _bash(start, env=env, cwd=ROOT, log=tmp_path / "serve.log")
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{api_port}/readyz"), timeout=180, interval=0.5)
        assert (tmp_path / "var" / "admin.key").exists()  # serve kept its key where it said
        _import_then_check(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        assert list((tmp_path / "var" / "images").glob("*/file")), "the file is not in the store"
        _watch_then_delete(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        assert not list((tmp_path / "var" / "images").glob("*/file")), "the deleted image's file is still there"
    finally:
        _stop(serve)


def test_the_distributed_recipe_runs_and_imports_an_image(tmp_path, rabbitmq_url, postgres_admin_url):
    api_port, images_port, origin_port = free_port(), free_port(), free_port()
    prefix = f"t{uuid.uuid4().hex[:8]}."
    database = f"imagesvc_readme_{uuid.uuid4().hex[:8]}"
    subs = {**_subs(tmp_path, api_port, origin_port),
            "127.0.0.1:5432/imagesvc": f"127.0.0.1:5432/{database}", "--port 8000": f"--port {api_port}",
            "--port 8080": f"--port {images_port}", "127.0.0.1:8080": f"127.0.0.1:{images_port}",
            "/srv/images": str(tmp_path / "store"), "/srv/vms": str(tmp_path / "vms")}
    recipe = _substituted(tagged("start-distributed").text, subs)
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/" in recipe and "amqp://guest:guest@127.0.0.1:5672//" in recipe
    # What the test's machine differs in: queues of its own on the shared broker, a loopback origin.
    script = (f"export IMAGESVC_TOPOLOGY_PREFIX={prefix}\nexport IMAGESVC_FETCH_ALLOW=127.0.0.1:{origin_port}\n"
              f"export IMAGESVC_LOG_FORMAT=json\n{recipe}\nwait")
    env = _environment(tmp_path)
    del env["IMAGESVC_DATA_DIR"]
    log = tmp_path / "recipe.log"
    with open(tmp_path / "recipe.out", "wb") as out:
        recipe_run = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=out,
                                      stderr=open(log, "wb"), start_new_session=True)
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{api_port}/readyz"), timeout=120, interval=0.5)
        eventually(lambda: _answers(f"http://127.0.0.1:{images_port}/readyz"), timeout=60, interval=0.5)

        def consuming() -> None:
            text = log.read_text(errors="replace")
            assert text.count('"consumer.ready"') >= 5, text[-3000:]  # 4 workers and the node agent

        eventually(consuming, timeout=60, interval=0.5)
        printed = (tmp_path / "recipe.out").read_text().splitlines()
        said = next(index for index, line in enumerate(printed) if line.startswith("created SuperAdmin 'admin'"))
        key = printed[said + 1]  # "prints the API key alone on the last line"
        (tmp_path / "var").mkdir(exist_ok=True)
        (tmp_path / "var" / "admin.key").write_text(key.strip() + "\n")
        _import_then_check(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        assert list((tmp_path / "store").glob("*/file")), "the file is not in the shared store"
        _watch_then_delete(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        assert not list((tmp_path / "store").glob("*/file")), "the deleted image's file is still there"
        ran = _read_only_commands_succeed({**env, **_exported(script)}, subs, tmp_path)
        assert {"health", "dlq list", "store check", "config show", "admin user list"} <= ran, ran
    finally:
        _stop(recipe_run)
        drop_database(postgres_admin_url, f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
        delete_queues(rabbitmq_url, prefix, nodes=("cn1",))


def test_the_object_store_recipe_runs_with_two_image_servers(tmp_path, rabbitmq_url, postgres_admin_url,
                                                             s3_endpoint):
    """The README's object-store recipe on a real S3 server (Ceph radosgw): the import lands in the
    bucket, both image servers hand out the same bytes, and the delete leaves no object behind."""
    from tests.support.ceph import new_bucket, s3_client

    api_port, first_port, second_port, origin_port = free_port(), free_port(), free_port(), free_port()
    prefix = f"t{uuid.uuid4().hex[:8]}."
    database = f"imagesvc_readme_{uuid.uuid4().hex[:8]}"
    bucket = new_bucket(s3_endpoint, "readme")
    subs = {**_subs(tmp_path, api_port, origin_port),
            "127.0.0.1:5432/imagesvc": f"127.0.0.1:5432/{database}", "--port 8000": f"--port {api_port}",
            "--port 8080": f"--port {first_port}", "--port 8081": f"--port {second_port}",
            "127.0.0.1:8080": f"127.0.0.1:{first_port}", "s3://images/": f"s3://{bucket}/",
            "http://127.0.0.1:7480": s3_endpoint.endpoint_url, "AWS_REGION=us-east-1": f"AWS_REGION={s3_endpoint.region}",
            "images-key": s3_endpoint.access_key, "images-secret": s3_endpoint.secret_key,
            "/srv/vms": str(tmp_path / "vms")}
    recipe = _substituted(tagged("start-object-store").text, subs)
    assert f"s3://{bucket}/catalogue" in recipe and s3_endpoint.endpoint_url in recipe
    script = (f"export IMAGESVC_TOPOLOGY_PREFIX={prefix}\nexport IMAGESVC_FETCH_ALLOW=127.0.0.1:{origin_port}\n"
              f"export IMAGESVC_LOG_FORMAT=json\n{recipe}\nwait")
    env = _environment(tmp_path)
    del env["IMAGESVC_DATA_DIR"]
    log = tmp_path / "recipe.log"
    objects = s3_client(s3_endpoint)

    def keys() -> list[str]:
        listed = objects.list_objects_v2(Bucket=bucket, Prefix="catalogue/")
        return [item["Key"] for item in listed.get("Contents", [])]

    with open(tmp_path / "recipe.out", "wb") as out:
        recipe_run = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=out,
                                      stderr=open(log, "wb"), start_new_session=True)
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{api_port}/readyz"), timeout=120, interval=0.5)
        for port in (first_port, second_port):
            eventually(lambda port=port: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=60, interval=0.5)

        def consuming() -> None:
            text = log.read_text(errors="replace")
            assert text.count('"consumer.ready"') >= 5, text[-3000:]  # 4 workers and the node agent

        eventually(consuming, timeout=60, interval=0.5)
        printed = (tmp_path / "recipe.out").read_text().splitlines()
        said = next(index for index, line in enumerate(printed) if line.startswith("created SuperAdmin 'admin'"))
        (tmp_path / "var").mkdir(exist_ok=True)
        (tmp_path / "var" / "admin.key").write_text(printed[said + 1].strip() + "\n")
        _import_then_check(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        key = (tmp_path / "var" / "admin.key").read_text().strip()
        shown = httpx.get(f"http://127.0.0.1:{api_port}/api/image/tiny/", headers={"ES-API-KEY": key}, timeout=30)
        image_uuid = shown.json()["result"]["uuid"]
        assert f"catalogue/{image_uuid}/file" in keys(), keys()
        stored = objects.get_object(Bucket=bucket, Key=f"catalogue/{image_uuid}/file")["Body"].read()
        served = [httpx.get(f"http://127.0.0.1:{port}/images/{image_uuid}/file", timeout=30)
                  for port in (first_port, second_port)]
        assert [answer.status_code for answer in served] == [200, 200]
        assert served[0].content == served[1].content == stored
        assert served[0].headers["content-md5"] == served[1].headers["content-md5"]
        _watch_then_delete(tmp_path, subs, env, f"http://127.0.0.1:{api_port}/api")
        assert not [k for k in keys() if image_uuid in k], keys()
        assert not objects.list_multipart_uploads(Bucket=bucket).get("Uploads")
        credentials = {"AWS_REGION": s3_endpoint.region, "AWS_ACCESS_KEY_ID": s3_endpoint.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3_endpoint.secret_key}
        ran = _read_only_commands_succeed({**env, **_exported(script), **credentials}, subs, tmp_path)
        assert "store check" in ran, ran
    finally:
        _stop(recipe_run)
        drop_database(postgres_admin_url, f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
        delete_queues(rabbitmq_url, prefix, nodes=("cn1",))
