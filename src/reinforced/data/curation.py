"""Offline curation and inspection: ``reinforced data filter``, ``data inspect``, ``list tasks``.

``filter_by_pass_rate`` is the pass-rate band filter of Reason-RFT (arXiv 2503.20752) and
Open-Reasoner-Zero (arXiv 2503.24290): sample k completions per prompt with a model, measure the pass
rate p_i = (correct samples) / k, and keep prompts with low <= p_i <= high (by default also 0 < p_i < 1,
as all-correct or all-wrong groups give GRPO no signal). The measurement is a callable, so this module
needs no model; the CLI builds it from the rollout engine and reward composer. Kept rows are written
with ``meta.pass_rate``, which the ``curriculum`` sampler (``by: pass_rate``) reads as its prior.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from reinforced.data.datasets import load_file, resolve_path
from reinforced.data.rows import IMAGE_PLACEHOLDER
from reinforced.data.tasks import FORMS, TASKS, Task
from reinforced.data.templates import to_messages
from reinforced.types import Prompt

PassRateFn = Callable[[Sequence[Prompt]], Sequence[float]]


def filter_by_pass_rate(prompts: Sequence[Prompt], pass_rates: PassRateFn, low: float = 0.0, high: float = 1.0,
                        keep_extremes: bool = False, batch_size: int = 16) -> tuple[list[tuple[Prompt, float]], dict[str, float]]:
    """Keep prompts whose measured pass rate lies in [low, high] (and in (0, 1) unless ``keep_extremes``).

    ``pass_rates(batch)`` returns one rate in [0, 1] per prompt of the batch. Returns the kept
    ``(prompt, rate)`` pairs in input order and counts (``kept``, ``dropped_zero``, ``dropped_one``,
    ``dropped_band``, ``dropped_failed`` (rate NaN: no verifier ran), ``mean_pass_rate``).

    >>> ps = [Prompt(str(i), "q") for i in range(4)]
    >>> kept, stats = filter_by_pass_rate(ps, lambda b: [{"0": 0.0, "1": 0.5, "2": 1.0, "3": 0.25}[p.prompt_id] for p in b])
    >>> [(p.prompt_id, r) for p, r in kept], stats["dropped_zero"], stats["dropped_one"]
    ([('1', 0.5), ('3', 0.25)], 1.0, 1.0)
    """
    if not 0.0 <= low <= high <= 1.0 or batch_size < 1:
        raise ValueError(f"need 0 <= low <= high <= 1 and batch_size >= 1, got low={low}, high={high}, "
                         f"batch_size={batch_size}")
    kept: list[tuple[Prompt, float]] = []
    counts = Counter[str]()
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        rates = [float(r) for r in pass_rates(batch)]
        if len(rates) != len(batch):
            raise ValueError(f"pass_rates returned {len(rates)} rates for {len(batch)} prompts")
        for prompt, rate in zip(batch, rates, strict=True):
            if math.isnan(rate):  # every sample's verifier failed: no measured rate, not a 0
                counts["dropped_failed"] += 1
                continue
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"pass rate {rate} of prompt {prompt.prompt_id!r} is outside [0, 1]")
            total += rate
            if not keep_extremes and rate in (0.0, 1.0):
                counts["dropped_zero" if rate == 0.0 else "dropped_one"] += 1
            elif not low <= rate <= high:
                counts["dropped_band"] += 1
            else:
                kept.append((prompt, rate))
    stats = {k: float(counts[k]) for k in ("dropped_zero", "dropped_one", "dropped_band", "dropped_failed")}
    measured = len(prompts) - counts["dropped_failed"]
    return kept, {**stats, "kept": float(len(kept)), "mean_pass_rate": total / max(1, measured)}


def prompt_to_row(prompt: Prompt, pass_rate: float | None = None) -> dict[str, Any]:
    """A Prompt as a JSONL row of the shared layout (or the messages layout when it has a conversation)."""
    images = [str(im) for im in prompt.images if isinstance(im, (str, Path))]
    if len(images) != prompt.num_images:
        raise ValueError(f"prompt {prompt.prompt_id!r} holds in-memory images; only image paths can be written")
    meta = dict(prompt.metadata)
    if pass_rate is not None:
        meta["pass_rate"] = pass_rate
    row: dict[str, Any] = {"id": prompt.prompt_id, "answer": prompt.answer, "answer_type": prompt.answer_type}
    if prompt.messages:
        row["messages"] = _messages_with_items(prompt.messages, images)
    else:
        row["question"] = prompt.question
        if images:
            row["images"] = images
    if prompt.choices:
        row["choices"] = list(prompt.choices)
    for key in ("reward_set", "system"):
        if getattr(prompt, key) is not None:
            row[key] = getattr(prompt, key)
    return {**row, "meta": meta}


def _messages_with_items(messages: Iterable[Any], images: list[str]) -> list[dict[str, Any]]:
    out, queue = [], list(images)
    for turn in messages:
        text = str(turn["content"])
        if IMAGE_PLACEHOLDER not in text:
            out.append({"role": turn["role"], "content": text})
            continue
        items: list[dict[str, Any]] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                items.append({"type": "image", "image": queue.pop(0)})
            if piece:
                items.append({"type": "text", "text": piece})
        out.append({"role": turn["role"], "content": items})
    return out


def write_jsonl(path: str | Path, prompts: Sequence[Prompt], pass_rates: Sequence[float] | None = None) -> Path:
    """Write prompts (with their measured pass rates in ``meta.pass_rate``) as a JSONL file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rates = list(pass_rates) if pass_rates is not None else [None] * len(prompts)
    with path.open("w", encoding="utf-8") as f:
        for prompt, rate in zip(prompts, rates, strict=True):
            f.write(json.dumps(prompt_to_row(prompt, rate), ensure_ascii=False) + "\n")
    return path


def _image_size(image: Any) -> tuple[int, int] | None:
    from PIL import Image

    if hasattr(image, "size") and not isinstance(image, (str, Path)):
        return tuple(image.size)  # type: ignore[return-value]
    with Image.open(image) as im:  # reads the header only
        return im.size


def _render(prompt: Prompt, template: str) -> str:
    lines = [f"--- {prompt.prompt_id} (answer: {prompt.answer!r}, type {prompt.answer_type})"]
    for m in to_messages(prompt, template):
        content = m["content"]
        if isinstance(content, list):
            content = "".join("<image>" if c["type"] == "image" else c["text"] for c in content)
        lines.append(f"[{m['role']}] {content}")
    return "\n".join(lines)


def inspect_file(path: str | Path, num_examples: int = 3, template: str = "think_answer", split: str = "train",
                 **options: Any) -> str:
    """A report on a data file: counts, answer-type histogram, choices, image sizes, rendered examples."""
    prompts, summary = load_file(resolve_path(str(path), split), **options)
    sizes = Counter(_image_size(im) for p in prompts for im in p.images)
    lengths = sorted(len(p.question) for p in prompts)
    lines = [str(summary), f"question length (chars): min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
             f"max {lengths[-1]}", f"multiple choice: {sum(1 for p in prompts if p.choices)} rows",
             "answer types:"]
    lines += [f"  {t:<28} {n}" for t, n in summary.answer_types.most_common()]
    if sizes:
        lines.append("image sizes (w x h):")
        lines += [f"  {w}x{h:<20} {n}" for (w, h), n in sizes.most_common(10)]
    for line, reason in summary.skipped[:10]:
        lines.append(f"skipped line {line}: {reason}")
    lines.append(f"examples (template {template}):")
    lines += [_render(p, template) for p in prompts[:num_examples]]
    return "\n".join(lines)


def _supports(task: Task, form: str) -> bool:
    try:
        task.sample(random.Random(0), form=form)
    except ValueError:
        return False
    return True


def list_tasks() -> str:
    """One line per procedural task: name, modality, question forms and the open form's rewards."""
    rows = []
    for name, task in TASKS.items():
        forms = [f for f in FORMS if _supports(task, f)]
        rewards = " + ".join(f"{t.get('weight', 1.0):g}*{t['name']}" for t in task.reward_terms)
        rows.append(f"{name:<18} {task.modality:<6} forms: {', '.join(forms):<22} rewards: {rewards:<40} "
                    f"{task.description}")
    return "\n".join(rows)
