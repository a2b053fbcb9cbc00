"""``pip install .`` (not editable) gives a working ``imagesvc``: the wheel holds one top-level
package, ``imagesvc`` (shared, services, domain and the migrations mapped into it), and the
installed command migrates a database from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_one_package_that_works_from_anywhere(tmp_path):
    # Built from a clean copy: setuptools reuses a checkout's build/ directory, which may hold
    # files of an older layout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "results"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "wheel").glob("imagesvc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"imagesvc", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "imagesvc/migrations/env.py" in names and "imagesvc/shared/db/models.py" in names
    assert len([name for name in names if name.startswith("imagesvc/migrations/versions/")]) >= 12
    # The interactive API docs' files (package data): our page and initializer, Swagger UI and its license.
    docs = "imagesvc/services/gateway/static/"
    assert {docs + "docs.html", docs + "docs.js", docs + "swagger-ui/swagger-ui-bundle.js",
            docs + "swagger-ui/swagger-ui.css", docs + "swagger-ui/LICENSE", docs + "swagger-ui/NOTICE"} <= set(names)
    assert not [name for name in names if name.endswith(".map")]
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                "--disable-pip-version-check", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first; the dependencies come from this environment.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")},
           "PYTHONPATH": str(target), "IMAGESVC_DATABASE_URL": f"sqlite:///{elsewhere / 'x.db'}"}
    probe = subprocess.run([sys.executable, "-c", "import imagesvc.shared.config as c; print(c.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().startswith(str(target)), probe.stdout + probe.stderr
    upgraded = subprocess.run([sys.executable, "-m", "imagesvc", "db", "upgrade"], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0 and "database at head" in upgraded.stdout, upgraded.stdout + upgraded.stderr
