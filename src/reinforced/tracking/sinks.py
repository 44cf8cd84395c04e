"""Metric sinks: metrics.jsonl (always), TensorBoard events (optional), and rollout samples per step.

Metric names are stable and hierarchical (``reward/mean``, ``train/kl``, ``eval/<set>/accuracy``); every
stage returns its own stats dict and the loop merges them here, so no record carries metrics.
"""

from __future__ import annotations

import json
import math
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
    """Appends one JSON object per step to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import only when used

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _clean(float(v)) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint so the file has one row per step."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
                    "reward": None if group.rewards is None else group.rewards[g],
                    "accuracy": None if group.accuracy is None else group.accuracy[g],
                    "components": {k: v[g] for k, v in group.components.items()},
                }
            )
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


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
