"""Training progress: a live rich bar on a terminal, plain log lines everywhere else.

A live bar redraws one line in place; written to a file (CI, ``nohup``, a cluster's job log) it leaves only
its last frame. So when the output is not a terminal, every ``every`` steps (and at the last step) one plain
line is printed instead: ``step 20/100  reward 0.412  acc 0.38  len 57  812 tok/s  ETA 0:03:10``. The ETA
is the mean time of the steps run so far (since the start or the resume) times the steps left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def describe(stats: Mapping[str, float]) -> str:
    """The step's headline numbers: reward, accuracy, completion length, throughput.

    >>> describe({"reward/mean": 0.5, "accuracy/mean": 0.25, "rollout/completion_len": 12, "perf/tokens_per_s": 300})
    'reward 0.500  acc 0.25  len 12  300 tok/s'
    """
    return (f"reward {stats.get('reward/mean', float('nan')):.3f}  "
            f"acc {stats.get('accuracy/mean', float('nan')):.2f}  "
            f"len {stats.get('rollout/completion_len', float('nan')):.0f}  "
            f"{stats.get('perf/tokens_per_s', 0.0):.0f} tok/s")


class Progress:
    """Context manager; ``advance(step, stats)`` after each step. Disabled: prints nothing.

    ``file``: where progress goes (default stderr for the bar; stdout for plain lines, the stream a job's
    log captures). ``every``: steps between plain lines when ``file`` is not a terminal.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 10,
                 file: TextIO | None = None) -> None:
        self.enabled, self.total, self.every = enabled, total, max(1, every)
        stream = file if file is not None else sys.stdout
        self.plain = enabled and not stream.isatty()
        self._file = stream
        self._start_step, self._start_time = start, time.monotonic()
        self._bar = RichProgress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=file, stderr=file is None), disable=not enabled or self.plain,
        )
        self._task = self._bar.add_task("", total=total, completed=start)

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def advance(self, step: int, stats: Mapping[str, float]) -> None:
        desc = describe(stats)
        self._bar.update(self._task, completed=step, description=desc)
        if self.plain and (step % self.every == 0 or step == self.total):
            print(f"step {step}/{self.total}  {desc}  ETA {self._eta(step)}", file=self._file, flush=True)

    def _eta(self, step: int) -> str:
        done = step - self._start_step
        if done <= 0:
            return "?"
        left = (time.monotonic() - self._start_time) / done * max(0, self.total - step)
        return str(timedelta(seconds=round(left)))
