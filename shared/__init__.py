"""Contracts and infrastructure shared by every imagesvc process.

Rules of this package: message contracts and their codec, broker topology/publisher/consumer
runner, database models/engine/unit of work/locks/outbox, configuration, logging, the error
taxonomy. No business rules, no HTTP, no I/O or environment reads at import time, and never an
import of ``services`` or ``domain``.
"""
