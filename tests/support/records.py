"""Test records with plausible defaults (override what a test is about)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from imagesvc.shared.db.records import ImageRecord

UUID = "2f0c7c3e-1111-2222-3333-444455556666"
CREATED = datetime(2020, 1, 2, 10, 11, 12, 123456, tzinfo=timezone.utc)


def image_record(**changes: Any) -> ImageRecord:
    base = ImageRecord(
        uuid=UUID, name="centos-7", alias="centos-7", version="20200101", desc="CentOS 7 64-bit", owner="admin",
        access=1, size=10240, ostype=1, deploy=False, resize=True, status=1, tags=["linux", "base"],
        created=CREATED, changed=CREATED + timedelta(hours=1), dc_bound=None, dcs=["main"],
        manifest={"uuid": UUID, "name": "centos-7", "working": True},
        manifest_active={"uuid": UUID, "name": "centos-7"},
    )
    return base.with_changes(**changes)
