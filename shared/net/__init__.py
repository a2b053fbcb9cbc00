"""Outbound HTTP under the URL policy (no fetch ever reaches a non-public address by accident)."""
