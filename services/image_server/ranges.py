"""HTTP byte ranges (RFC 9110 §14) as far as an image download needs them: one range."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


class Unsatisfiable(Exception):
    """The range names no byte of the file: 416 with ``Content-Range: bytes */<size>``."""


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one range of ``header`` within a file of ``size`` bytes, or None for the whole file.

    None also for what RFC 9110 lets a server ignore: no header, a header it does not parse, and
    several ranges (answered with the whole file rather than multipart/byteranges). A range past
    the end is clipped to it; one that starts past the end, or a zero-length suffix, raises
    Unsatisfiable.
    """
    if not header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(size - suffix, 0), size - 1)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # not a valid range at all, so ignored (RFC 9110 §14.1.1)
    last = int(last_text) if last_text else size - 1
    if first >= size:
        raise Unsatisfiable(header)
    return ByteRange(first, min(last, size - 1))
