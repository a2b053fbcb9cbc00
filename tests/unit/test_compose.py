"""compose.yaml, read (Docker does not run here): every long-running imagesvc service has a
healthcheck that asks its own probes with ``imagesvc health``."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_imagesvc_service_has_a_healthcheck_on_its_probes():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    ours = {name: service for name, service in services.items() if service.get("build") and name != "migrate"}
    assert {"gateway", "importer", "updater", "deleter", "projector", "image-server"} <= set(ours)
    for name, service in ours.items():
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "imagesvc", "health"], (name, test)
        if service["command"][0] == "worker":
            assert test[3] == "local" and service["environment"]["IMAGESVC_HEALTH_PORT"], name
        else:
            port = service["command"][service["command"].index("--port") + 1]
            assert test[3] == f"http://127.0.0.1:{port}", name
