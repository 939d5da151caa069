"""Incremental Server-Sent Events splitting for the usage taps.

The relay forwards bytes untouched; the tap sees the same chunks on the side and only has to
find complete events. Events are split on a blank line; ``\\r\\n`` line endings are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator


class SSESplitter:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield (event name, data) for every event completed by ``chunk``."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            yield parse_event(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:]


def parse_event(block: bytes) -> tuple[bytes, bytes]:
    # Both providers write nearly every event as one "event:" line and one "data:" line:
    # read that shape without splitting the block (a stream's events are mostly this).
    if block.startswith(b"event:"):
        newline = block.find(b"\n")
        one_data_line = block.find(b"\n", newline + 1) < 0
        if newline > 0 and one_data_line and block.startswith(b"data:", newline + 1):
            value = block[newline + 6 :]
            return block[6:newline].strip(), value[1:] if value[:1] == b" " else value
    return parse_lines(block)


def parse_lines(block: bytes) -> tuple[bytes, bytes]:
    """Any event: its lines one by one (the last "event:" line names it; "data:" lines are
    joined with newlines; other lines are ignored)."""
    event = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
    return event, b"\n".join(data)
