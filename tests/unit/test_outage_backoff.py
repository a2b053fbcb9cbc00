"""The retry delays for a database outage (``Transient``) are their own setting."""

from __future__ import annotations

import pytest

from imagesvc.shared.config import ConfigError, Settings


def test_the_default_outage_backoff_outlives_a_25_second_outage():
    settings = Settings.from_env({})
    delays = settings.outage_backoff
    assert delays == (1.0, 5.0, 10.0, 10.0)
    before_last_attempt = sum(delays[min(i, len(delays) - 1)] for i in range(settings.max_attempts - 1))
    assert before_last_attempt >= 25


def test_the_outage_backoff_is_read_and_checked():
    assert Settings.from_env({"IMAGESVC_OUTAGE_BACKOFF": "2, 4"}).outage_backoff == (2.0, 4.0)
    with pytest.raises(ConfigError, match="IMAGESVC_OUTAGE_BACKOFF"):
        Settings.from_env({"IMAGESVC_OUTAGE_BACKOFF": " , "})
