"""Test tiers: ``ci`` (every push: ``./scripts/test``, ``.ci/run``) and ``nightly``
(``./scripts/nightly``: ``IMAGESVC_TIER=nightly``, bigger counts and the tests marked
``nightly``, which the ci tier skips).

A fault or load test takes its sizes from ``scaled``, so one test serves both tiers::

    rounds = scaled(ci=20, nightly=500)
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

TIERS = ("ci", "nightly")


def tier() -> str:
    """The tier this run is in (``IMAGESVC_TIER``, default ``ci``)."""
    value = os.environ.get("IMAGESVC_TIER", "ci").strip().lower() or "ci"
    if value not in TIERS:
        raise ValueError(f"IMAGESVC_TIER={value!r}: must be one of {', '.join(TIERS)}")
    return value


def is_nightly() -> bool:
    return tier() == "nightly"


def scaled(*, ci: T, nightly: T) -> T:
    """``nightly`` in the nightly tier, ``ci`` otherwise."""
    return nightly if is_nightly() else ci
