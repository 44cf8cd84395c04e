"""Metric sinks: metrics.jsonl (always), the trackers of ``training.report_to`` (trackers.py: TensorBoard,
W&B, MLflow), and rollout samples per step with each sample's advantage and what became of it in the update.

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
from typing import TYPE_CHECKING, Any

import torch

from reinforced.types import RolloutGroup

if TYPE_CHECKING:
    from reinforced.config import Config
    from reinforced.tracking.trackers import Tracker


def _clean(value: Any) -> Any:
    """JSON-safe floats: NaN/inf become None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON object per step to ``metrics.jsonl`` and sends each row to the named trackers.

    ``resume_step``: the step a run continues from; rows logged after it are dropped (rewritten beside the
    file and renamed in, so a crash or full disk never erases the history), TensorBoard events after it are
    purged (``purge_step``) so each step appears once, and W&B / MLflow continue the run recorded in
    ``trackers.json``. -1 (or None) starts the history and the tracker runs afresh.
    ``config``: the resolved config, logged once to each tracker run.
    """

    def __init__(self, run_dir: Path, report_to: Sequence[str] = ("tensorboard",),
                 resume_step: int | None = None, config: Config | None = None) -> None:
        from reinforced.tracking.trackers import TRACKERS, TrackerContext

        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            self.truncate_after(resume_step)
        resume = resume_step is not None and resume_step >= 0
        ctx = TrackerContext(run_dir, run_name=config.run.name if config else run_dir.name,
                             config=config.to_dict() if config else {},
                             config_yaml=config.to_yaml() if config else "", resume=resume,
                             purge_after=resume_step)
        self.trackers: list[Tracker] = []
        try:
            for name in report_to:
                self.trackers.append(TRACKERS[name](ctx))
        except BaseException:
            self.close()  # the trackers already started end cleanly before the error propagates
            raise

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _clean(float(v)) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(step, metrics)

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
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


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


def sample_notes(advantages: torch.Tensor, loss_mask: torch.Tensor, is_truncated: torch.Tensor,
                 failed: torch.Tensor, kept: torch.Tensor, mask_truncated: bool) -> list[dict[str, Any]]:
    """Per sample (rows in group order): its advantage and what the update did with it.

    ``advantages`` [N, T] and ``loss_mask`` [N, T] as computed before pruning; ``is_truncated``, ``failed``
    (reward NaN), ``kept`` (survived sample pruning) [N] bool. ``advantage`` is the mean over the sample's
    tokens in the loss (the sequence advantage for outcome estimators), None when none is. ``outcome``:
    ``trained``, ``pruned`` (CPPO), ``truncated_masked`` (DAPO overlong filter) or ``reward_failed``.

    >>> sample_notes(torch.tensor([[1., 1.], [0., 0.]]), torch.tensor([[True, True], [False, False]]),
    ...              torch.tensor([False, True]), torch.tensor([False, False]), torch.tensor([True, True]), True)
    [{'advantage': 1.0, 'outcome': 'trained'}, {'advantage': None, 'outcome': 'truncated_masked'}]
    """
    num = loss_mask.sum(dim=1)  # [N]
    mean = (advantages * loss_mask).sum(dim=1) / num.clamp(min=1)  # [N]
    notes = []
    for r in range(advantages.shape[0]):
        outcome = ("reward_failed" if failed[r] else "truncated_masked" if mask_truncated and is_truncated[r]
                   else "trained" if kept[r] else "pruned")
        notes.append({"advantage": float(mean[r]) if num[r] else None, "outcome": outcome})
    return notes


def write_samples(run_dir: Path, step: int, groups: Sequence[RolloutGroup], limit: int,
                  notes: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Save up to ``limit`` rollouts (prompt, completion, reward and components) of this step; ``notes``
    (``sample_notes``, one per completion in group order) add each one's advantage and outcome."""
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
                    **(notes[len(rows)] if notes is not None else {}),
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
