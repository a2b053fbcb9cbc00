"""One deployment, one configuration, through the real commands: a process whose image store or
broker settings disagree with what its deployment recorded refuses to start (exit code 2, one
message naming the setting, both values and the fix) and changes nothing; ``imagesvc config
show`` shows the record and the verdicts; every process logs its effective settings."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.systems import _command, free_port, start_embedded

pytestmark = pytest.mark.e2e


def run(system, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), cwd=system.workdir, env={**system.env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_a_worker_with_another_store_or_prefix_refuses_to_start(distributed, tmp_path):
    """The system runs without an image store (recorded by its first process); an importer
    given a store, then an updater given another topology prefix, each exits 2 at once."""
    with_store = run(distributed, "worker", "importer", env={"IMAGESVC_IMAGE_STORE": str(tmp_path / "store")})
    assert with_store.returncode == 2, with_store.stderr[-2000:]
    said = with_store.stderr
    assert "IMAGESVC_IMAGE_STORE: this importer has" in said and "the deployment's is none" in said, said
    assert "imagesvc config record --yes" in said, said
    assert not (tmp_path / "store" / ".imagesvc-store").exists()
    other_prefix = run(distributed, "worker", "updater", env={"IMAGESVC_TOPOLOGY_PREFIX": "someone-else."})
    assert other_prefix.returncode == 2, other_prefix.stderr[-2000:]
    assert (f"IMAGESVC_TOPOLOGY_PREFIX: this updater has 'someone-else.', but the deployment's is "
            f"'{distributed.prefix}'") in other_prefix.stderr
    shown = run(distributed, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert f"topology_prefix = '{distributed.prefix}', recorded by gateway@" in shown.stdout, shown.stdout
    assert "image_store = 'none'" in shown.stdout and ": agrees" in shown.stdout, shown.stdout
    assert "guest:guest" not in shown.stdout  # the broker password is masked
    started = [json.loads(line) for line in distributed.log("importer").splitlines()
               if '"config.effective"' in line]
    assert started and started[0]["settings"]["IMAGESVC_TOPOLOGY_PREFIX"] == distributed.prefix
    assert "IMAGESVC_DATABASE_URL" in started[0]["from_environment"]


def test_serve_restarted_on_another_store_refuses_until_the_record_is_changed(tmp_path):
    store, other = tmp_path / "store", tmp_path / "empty"
    (tmp_path / "serve").mkdir()
    system = start_embedded(tmp_path / "serve", {"IMAGESVC_IMAGE_STORE": str(store)})
    system.stop()
    identity = (store / ".imagesvc-store").read_text().strip()
    moved = {"IMAGESVC_IMAGE_STORE": str(other)}
    refused = run(system, "serve", "--port", str(free_port()), env=moved)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"the deployment's is store {identity}" in refused.stderr and str(other) in refused.stderr
    assert "is running at" not in refused.stdout
    recorded = run(system, "config", "record", "--serve", "--yes", env=moved)
    assert recorded.returncode == 0 and "recorded image_store" in recorded.stdout, recorded.stderr
    shown = run(system, "config", "show", "--serve", env=moved)
    assert "image_store = " in shown.stdout and ": agrees" in shown.stdout, shown.stdout
