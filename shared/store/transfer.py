"""What every transfer of an image file into the store shares (the import and the snapshot export).

- ``TransferFailed``: the task's FAILURE result in esimg's words (reference §9.2: its return codes
  and ``ERROR:`` messages) plus a stable ``code`` (deviations #9);
- ``ProgressMeter``: counts bytes, reports at most once per interval;
- ``ChunkWorker``: a second thread that consumes chunks from a bounded queue, so that hashing and
  writing (hashlib and ``os.write`` release the GIL) overlap with producing the next chunk while
  at most ``depth`` chunks are held in memory.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

#: esimg's return codes (reference §9.2): 2 manifest, 4 host, 5 dataset (the snapshot), 7 image
#: directory (the store), 8 file, 9 manifest write, 10 space.
RC_MANIFEST, RC_HOST, RC_DATASET, RC_STORE, RC_FILE, RC_MANIFEST_WRITE, RC_SPACE = 2, 4, 5, 7, 8, 9, 10
#: Free space esimg import wanted beyond the file itself.
SPACE_MARGIN = 512 * 1024
#: Chunks in flight between a producing and a consuming thread (bounds the memory).
QUEUE_CHUNKS = 4

#: ``progress(done, total)``: bytes done so far, of ``total`` (None when unknown).
Progress = Callable[[int, "int | None"], None]


class TransferFailed(Exception):
    """The transfer cannot complete; ``result()`` is the task's FAILURE result."""

    def __init__(self, returncode: int, message: str, code: str):
        super().__init__(message)
        self.returncode = returncode
        self.message = f"ERROR: {message}"
        self.code = code

    def result(self) -> dict[str, Any]:
        return {"returncode": self.returncode, "message": self.message,
                "detail": f"Got bad return code ({self.returncode}). Error: {self.message}", "code": self.code}


class ProgressMeter:
    """Counts bytes and reports progress at most once per ``interval`` seconds."""

    def __init__(self, total: int | None, report: Progress, interval: float = 1.0):
        self.done = 0
        self._total = total
        self._report = report
        self._interval = interval
        self._next = time.monotonic() + interval

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self._report(self.done, self._total)


class ChunkWorker:
    """Calls ``consume(chunk)`` for every fed chunk, in order, on a thread of its own.

    Contract: ``feed`` blocks while ``depth`` chunks are waiting (the memory bound) and raises the
    worker's first error, so the producer stops early; after an error the worker drains without
    consuming, so a producer never blocks on a dead worker. ``close`` must always be called: it
    waits for the last chunk and, unless ``raise_error`` is false (the producer failed and its
    own error is the one to report), raises the worker's error.
    """

    def __init__(self, consume: Callable[[bytes], None], *, name: str, depth: int = QUEUE_CHUNKS):
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue
            try:
                self._consume(chunk)
            except BaseException as exc:  # noqa: BLE001 - reported to the producer
                self.error = exc

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(chunk)

    def close(self, *, raise_error: bool = True) -> None:
        self._queue.put(None)
        self._thread.join()
        if raise_error and self.error is not None:
            raise self.error
