"""A rich progress bar for training: step, reward, accuracy, tokens/s and ETA."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Context manager; ``advance(step, stats)`` after each step. Disabled: prints nothing."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = RichProgress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled,
        )
        self._task = self._bar.add_task("", total=total, completed=start)

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def advance(self, step: int, stats: Mapping[str, float]) -> None:
        desc = (f"reward {stats.get('reward/mean', float('nan')):.3f}  "
                f"acc {stats.get('accuracy/mean', float('nan')):.2f}  "
                f"len {stats.get('rollout/completion_len', float('nan')):.0f}  "
                f"{stats.get('perf/tokens_per_s', 0.0):.0f} tok/s")
        self._bar.update(self._task, completed=step, description=desc)
