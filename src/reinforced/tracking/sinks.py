"""Metric sinks: metrics.jsonl (always), TensorBoard events (optional), and rollout samples per step.

Metric names are stable and hierarchical (``reward/mean``, ``train/kl``, ``eval/<set>/accuracy``); every
stage returns its own stats dict and the loop merges them here, so no record carries metrics.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reinforced.types import RolloutGroup


def _clean(value: Any) -> Any:
    """JSON-safe floats: NaN/inf become None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON object per step to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    ``resume_step``: the step a run continues from; rows logged after it are dropped (rewritten beside the
    file and renamed in, so a crash or full disk never erases the history) and TensorBoard events after it
    are purged (``purge_step``), so each step appears once. -1 starts the history afresh.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if resume_step is not None:
            self.truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import only when used

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _clean(float(v)) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step``: the kept rows go to a new file beside it, renamed over it."""
        if not self.path.exists():
            return
        kept = [row for row in _rows(self.path) if row["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.write("".join(json.dumps(row) + "\n" for row in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of ``path``; a torn last line (a crash mid-write) is dropped with a warning."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({err})") from None
            warnings.warn(f"{path}: dropped a torn last line (the run stopped mid-write)", stacklevel=3)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return _rows(Path(run_dir) / "metrics.jsonl")


def write_samples(run_dir: Path, step: int, groups: Sequence[RolloutGroup], limit: int) -> None:
    """Save up to ``limit`` rollouts (prompt, completion, reward and components) of this step."""
    if limit <= 0:
        return
    out = run_dir / "samples" / f"step-{step:06d}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, group in enumerate(groups):
        images = _image_refs(group.prompt.images, out.parent / f"step-{step:06d}-p{p}") if len(rows) < limit else []
        for g, completion in enumerate(group.completions):
            if len(rows) >= limit:
                break
            rows.append(
                {
                    "prompt_id": group.prompt.prompt_id,
                    "question": group.prompt.question,
                    "images": images,
                    "answer": group.prompt.answer,
                    "completion": completion.text,
                    "finish_reason": completion.finish_reason,
                    "num_tokens": completion.num_tokens,
                    # a failed reward is NaN in memory; null in the file keeps every line valid JSON
                    "reward": None if group.rewards is None else _finite(group.rewards[g]),
                    "accuracy": None if group.accuracy is None else _finite(group.accuracy[g]),
                    "components": {k: _finite(v[g]) for k, v in group.components.items()},
                    "reward_errors": list(group.error_texts[g]) if group.error_texts else [],
                }
            )
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _image_refs(images: Sequence[Any], stem: Path) -> list[str]:
    """Paths of a prompt's images; in-memory images (procedural tasks) are saved as PNG next to the samples."""
    refs = []
    for k, image in enumerate(images):
        if isinstance(image, (str, Path)):
            refs.append(str(image))
        elif hasattr(image, "save"):
            path = stem.with_name(f"{stem.name}-{k}.png")
            image.save(path)
            refs.append(path.name)
    return refs
