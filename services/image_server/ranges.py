"""HTTP byte ranges (RFC 9110 §14) as far as an image download needs them: one range."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.IGNORECASE)


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
        suffix = _capped(last_text, size)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(size - suffix, size - 1)
    if last_text and _number(last_text) < _number(first_text):
        return None  # not a valid range at all, so ignored (RFC 9110 §14.1.1)
    first = _capped(first_text, size)
    if first >= size:
        raise Unsatisfiable(header)
    last = _capped(last_text, size - 1) if last_text else size - 1
    return ByteRange(first, last)


# Numbers of any length are compared and capped without int(), which refuses more than 4300 digits.

def _number(digits: str) -> tuple[int, str]:
    """A sort key of a decimal number given as digits (leading zeros dropped)."""
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


def _capped(digits: str, cap: int) -> int:
    """``min(int(digits), cap)``."""
    key = _number(digits)
    return cap if key > _number(str(cap)) else int(key[1])
