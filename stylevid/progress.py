"""Progress and per-stage timing, reported by the library and drawn by the CLI.

The library only calls `stage(name, total)` and `advance()`; `cli/` supplies a rich implementation, tests
and library users get the silent default. Every stage's wall time is recorded for `result.json`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageReporter:
    """Silent reporter that still records how long each stage took (seconds, summed over repeats)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[StageReporter]:
        start = time.perf_counter()
        self.begin(name, total)
        try:
            yield self
        finally:
            self.end(name)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # Hooks for a visual reporter.
    def begin(self, name: str, total: int | None) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def status(self, values: dict[str, float]) -> None:
        """Live numbers of the current stage, e.g. {"loss": ..., "steps/s": ...} while training; drawn by the bar."""

    def end(self, name: str) -> None:
        pass
