"""Key material in memory: handed out in ``bytearray``s so that it can be wiped."""

from __future__ import annotations


def zeroize(buf: bytearray) -> None:
    """Overwrite ``buf`` in place with zero bytes (same buffer, same length)."""
    buf[:] = bytes(len(buf))
