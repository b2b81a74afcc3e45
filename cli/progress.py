"""A rich progress bar per stage (style inversion, first frame, all frames, decoding...)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stylevid.progress import StageReporter


class RichStageReporter(StageReporter):
    def __init__(self, console: Console):
        super().__init__()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),  # live numbers a stage reports (training: loss, steps/s, clips/s)
            console=console,
            transient=False,
            # No refresh thread: a Python thread waking 10 times a second next to torch's OpenMP workers
            # slowed CPU sampling down more than tenfold on a 2-core machine. Redraw on each step instead.
            auto_refresh=False,
        )
        self._task = None

    def __enter__(self) -> RichStageReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def begin(self, name: str, total: int | None) -> None:
        self._task = self.progress.add_task(name, total=total, status="")
        self.progress.refresh()

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self.progress.advance(self._task, steps)
            self.progress.refresh()

    def status(self, values: dict[str, float]) -> None:
        # Shown at the next advance(), which redraws anyway: no extra redraw per step.
        if self._task is not None:
            self.progress.update(self._task, status="  ".join(f"{key} {value:.4g}" for key, value in values.items()))

    def end(self, name: str) -> None:
        if self._task is not None:
            total = self.progress.tasks[self._task].total or 1
            self.progress.update(self._task, completed=total, total=total)
            self.progress.refresh()
            self._task = None


class SilentStageReporter(StageReporter):
    """For logs and pipes: no bars, only the timings (which still go to result.json)."""

    def __enter__(self) -> StageReporter:
        return self

    def __exit__(self, *exc) -> None:
        pass


def stage_reporter(console: Console) -> StageReporter:
    # Under torchrun every rank runs the task; only rank 0 draws, so the terminal shows one bar, not one per rank.
    if int(os.environ.get("RANK", "0")) != 0:
        return SilentStageReporter()
    return RichStageReporter(console) if console.is_terminal else SilentStageReporter()
