"""shared.crash: IMAGESVC_CRASH_AT ends the process at the named point, and costs nothing unset."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imagesvc.shared import crash

PROGRAM = """
from imagesvc.shared.crash import crash_point
for hit in range(1, 6):
    print(hit, flush=True)
    crash_point("after_commit_before_ack")
print("survived", flush=True)
"""


def run(spec: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != crash.VARIABLE}
    if spec is not None:
        env[crash.VARIABLE] = spec
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60)


def test_unset_the_process_runs_through():
    done = run(None)
    assert done.returncode == 0 and done.stdout.split()[-1] == "survived"


def test_a_named_point_exits_137_on_its_first_hit():
    done = run("after_commit_before_ack")
    assert done.returncode == 137 and done.stdout.split() == ["1"]
    assert "crash point after_commit_before_ack" in done.stderr


def test_the_nth_hit_and_other_points_are_respected():
    done = run("after_download,after_commit_before_ack:3")
    assert done.returncode == 137 and done.stdout.split() == ["1", "2", "3"]


def test_probability_one_always_crashes():
    assert run("after_commit_before_ack@1").returncode == 137
    assert run("after_commit_before_ack@0").returncode == 0


@pytest.mark.parametrize("spec", ["after_comit", "after_store:2@0.5"])
def test_a_mistyped_spec_is_refused(spec):
    with pytest.raises(ValueError):
        crash._Plan(spec)
