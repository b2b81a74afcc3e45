"""Keeping what C libraries print (ffmpeg through decord, libpng through OpenCV) off the user's terminal.

decord and OpenCV write their warnings and errors straight to file descriptor 2 from C code, so redirecting
Python's `sys.stderr` does not catch them: an undecodable video printed two to seven lines of ffmpeg and decord
output before stylevid's own one-line error. `captured_native_stderr` points fd 2 at a temporary file around the
native call and restores it afterwards; what was written is handed back, so an error can quote its reason.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55ad...] ", "[02:43:41] " and "/src/video/video_reader.cc:83: " prefixes.
_BRACKET_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|c|h):\d+:\s*")
# decord's "ERROR opening: <path>, <ffmpeg's reason>": the path is already in stylevid's message.
_OPENING = re.compile(r"^ERROR opening: .*?, (?=\S)")


class NativeOutput(list):
    """The lines the native code wrote to fd 2 (filled when the `with` block ends)."""

    def reason(self, limit: int = 2) -> str:
        """The distinct lines, stripped of library and source-location prefixes, joined into one short phrase."""
        reasons: list[str] = []
        for line in self:
            text = _OPENING.sub("", _SOURCE_LOCATION.sub("", _BRACKET_PREFIX.sub("", line.strip()))).strip()
            if text and text not in reasons:
                reasons.append(text)
        return "; ".join(reasons[:limit])


@contextmanager
def captured_native_stderr() -> Iterator[NativeOutput]:
    """Send everything written to fd 2 inside the block to a temporary file; yield its lines (after the block).

    Nothing is lost for good: the lines are logged at debug level. If fd 2 cannot be redirected (it is closed,
    or the platform refuses), the block runs as it is.
    """
    output = NativeOutput()
    try:
        sys.stderr.flush()  # Python's own buffered text goes to the terminal, not into the capture
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    if saved is None:
        yield output
        return
    capture = tempfile.TemporaryFile()
    try:
        os.dup2(capture.fileno(), 2)
        try:
            yield output
        finally:
            os.dup2(saved, 2)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            output.extend(line for line in text.splitlines() if line.strip())
            for line in output:
                logger.debug("native stderr: %s", line)
    finally:
        os.close(saved)
        capture.close()
