"""Test support: polling, a loopback origin server, service gating, system launchers."""
