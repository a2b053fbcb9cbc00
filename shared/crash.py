"""Deterministic crash points, for fault-injection tests only.

``crash_point("after_commit_before_ack")`` ends the process at once with ``os._exit(137)`` (the
exit status of a SIGKILL: no ``finally``, no atexit, no flush, no ack) when the environment
variable ``IMAGESVC_CRASH_AT`` names that point. Spellings (comma-separated, several points at
once allowed):

``name``        crash on the first hit of ``name``;
``name:N``      crash on the N-th hit of ``name`` in this process (1 is the first);
``name@P``      crash on each hit with probability P (0 < P <= 1), e.g. ``name@0.2``;
``name:N@P``    not allowed (either a hit number or a probability).

The variable is read once, on the first call in a process; unset (production), a call is one
dictionary lookup on an empty dict. The points are listed in docs/architecture.md
("Crash points (tests only)"); an unknown name in the variable is refused at the first call, so
a typo in a test cannot silently test nothing.
"""

from __future__ import annotations

import os
import random
import sys
import threading

VARIABLE = "IMAGESVC_CRASH_AT"
EXIT_STATUS = 137  # 128 + SIGKILL, what a supervisor sees for a process killed with -9

POINTS = frozenset({
    "mid_download",  # importer: the partial file holds the download's first chunk
    "after_download",  # importer: the file is in the store, the final transaction not begun
    "mid_export",  # node agent: the partial file holds the snapshot's first compressed chunk
    "after_export",  # node agent: the file is in the store, its manifest not written
    "after_store",  # importer, node agent: the final manifest is written to the store, not yet committed
    "after_manifest_temp",  # store: a manifest's temporary written, not yet renamed over the manifest
    "after_manifest_rewrite",  # updater: the rewritten manifest is in the store, the catalogue unchanged
    "after_trash_move",  # store: an image's directory moved into .trash, not yet emptied
    "after_manifest_removed",  # S3 store: an image's manifest deleted, its file and the rest not yet
    "after_data_removed",  # deleter: the image's data removed from the store, its record not yet
    "after_commit_before_ack",  # CommandConsumer: committed and published, ack not handed over
    "relay_after_confirm_before_mark",  # OutboxRelay: broker confirmed, rows not marked published
    "gateway_before_publish",  # Dispatcher: checks passed, the command not yet published
    "gateway_after_publish_before_journal",  # Dispatcher: the broker confirmed, nothing journaled
    "gateway_after_journal",  # Dispatcher: the command journaled, the client not yet answered
})


class _Plan:
    def __init__(self, spec: str):
        self.nth: dict[str, int] = {}
        self.probability: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, chance = item.partition("@")
            name, _, nth = name.partition(":")
            if name not in POINTS:
                raise ValueError(f"{VARIABLE}: unknown crash point {name!r} (known: {', '.join(sorted(POINTS))})")
            if nth and chance:
                raise ValueError(f"{VARIABLE}: {item!r} has both a hit number and a probability")
            if chance:
                self.probability[name] = float(chance)
            else:
                self.nth[name] = int(nth or 1)
        self.armed = frozenset(self.nth) | frozenset(self.probability)
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, name: str) -> bool:
        if name in self.probability:
            return random.random() < self.probability[name]
        with self._lock:  # several worker threads may pass the same point
            self._hits[name] = self._hits.get(name, 0) + 1
            return self._hits[name] == self.nth[name]


_plan: _Plan | None = None


def _load() -> _Plan:
    global _plan
    if _plan is None:
        _plan = _Plan(os.environ.get(VARIABLE, ""))
    return _plan


def crash_point(name: str) -> None:
    """End the process here (``os._exit(137)``) if ``IMAGESVC_CRASH_AT`` arms this point."""
    plan = _plan or _load()
    if name in plan.armed and plan.due(name):
        sys.stderr.write(f"imagesvc: crash point {name} reached ({VARIABLE}), exiting with {EXIT_STATUS}\n")
        sys.stderr.flush()  # the only trace the test can see; nothing else is flushed or cleaned up
        os._exit(EXIT_STATUS)
