"""Pipeline stages that write data: ``generate`` (rejection sampling) and ``filter`` (pass-rate band).

generate: for each of ``generate.num_prompts`` prompts sample K completions with the current weights, score
them with the run's rewards and keep the correct ones (and well-formed: stopped by themselves, a ``format``
term above 0 where one ran), at most ``keep_per_prompt`` per prompt, shortest or highest-scored first, as
SFT rows whose ``target`` is the kept completion. A ``replay_share`` of the written rows comes from
``generate.replay`` (general data against forgetting). This is the rejection-sampled self-improvement of
Curr-ReFT (Deng et al., arXiv 2503.07065, stage 4) and Skywork R1V's SFT iterations on its own correct
samples (arXiv 2504.05599); RFT / STaR (Yuan et al. arXiv 2308.01825, Zelikman et al. arXiv 2203.14465)
before them.

filter: the same sampling, keeping the *prompts* whose pass rate p has low < p < high (``pass_band``): the
offline curation of Reason-RFT / Open-Reasoner-Zero, as ``reinforced data filter`` does for one file.

Rows are written in the project's own JSONL layout (``data/curation.prompt_to_row``) to the stage's
``data.jsonl``, in-memory images as PNG files under ``images/``; the kept fraction and per-source counts go
to the stage's ``metrics.jsonl``. Written by us: TRL and OpenRLHF have no VLM rejection-sampling stage that
works from our engine, rewards and row layout.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from reinforced.config import Config, DataConfig
from reinforced.data import build_sampler
from reinforced.data.checks import check_gold
from reinforced.data.curation import prompt_to_row
from reinforced.evaluation.metrics import eval_sampling
from reinforced.evaluation.run import engine_and_scorer, scorer_sets, with_verifier
from reinforced.training.setup import seed_everything
from reinforced.types import Completion, Prompt, RolloutGroup, is_correct, valid

CHUNK = 16  # prompts per engine call: bounds the rollout's memory


def run_generate(cfg: Config, band: bool) -> tuple[Path, dict[str, float], tuple[int, ...]]:
    """Run a ``generate`` (``band`` False) or ``filter`` (``band`` True) stage; returns (rows file, stats, the
    token lengths of every correct sample: what a stage's ``next_budget`` measures)."""
    out = Path(cfg.run.output_dir) / cfg.run.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    seed_everything(cfg.run.seed)
    sampler = build_sampler(cfg.data, cfg.run.seed)
    check_gold(sampler.sources, cfg.rewards.terms, scorer_sets(cfg))
    prompts = list({p.prompt_id: p for p in sampler.next(cfg.generate.num_prompts)}.values())
    engine, scorer = engine_and_scorer(cfg, sampler.sources)
    try:
        groups = sample_and_score(engine, scorer, prompts, cfg)
    finally:
        scorer.close()
    rows, stats = keep_band(groups, cfg.generate.pass_band) if band else keep_samples(groups, cfg)
    if not band and cfg.generate.replay_share > 0:
        replay, replay_stats = replay_rows(cfg, num_kept=len(rows))
        rows, stats = rows + replay, {**stats, **replay_stats}
    lengths = correct_lengths(groups)
    stats["correct"] = float(len(lengths))
    stats["correct_len_mean"] = sum(lengths) / len(lengths) if lengths else math.nan
    prefix = "filter" if band else "generate"
    stats = {f"{prefix}/{k}": v for k, v in stats.items()}
    path = write_rows(out, rows)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 0, **stats}) + "\n")
    return path, stats, lengths


def correct_lengths(groups: Sequence[RolloutGroup]) -> tuple[int, ...]:
    """Token lengths of the correct completions of ``groups`` (truncated ones included: they count as what the
    budget allowed)."""
    return tuple(c.num_tokens for g in groups for c, a in zip(g.completions, g.accuracy or (), strict=True)
                 if is_correct(a))


def sample_and_score(engine: Any, scorer: Any, prompts: Sequence[Prompt], cfg: Config) -> list[RolloutGroup]:
    """K completions per prompt (``rollout``'s temperature, length and stops), scored with accuracy."""
    r = cfg.rollout
    groups: list[RolloutGroup] = []
    for start in range(0, len(prompts), CHUNK):
        params = eval_sampling(r.temperature, cfg.generate.num_samples, r.max_new_tokens, r.stop,
                               seed=cfg.run.seed * 1_000_003 + start)
        chunk = prompts[start : start + CHUNK]
        scored, _ = scorer.score(engine.generate([with_verifier(p) for p in chunk], params))
        # the rows keep the prompt as drawn: a later stage scores them with its own reward sets
        groups.extend(replace(g, prompt=p) for g, p in zip(scored, chunk, strict=True))
    return groups


def passing(group: RolloutGroup, well_formed: bool) -> list[int]:
    """Indices of the completions that are correct (and, with ``well_formed``, not truncated and above 0 on
    every ``format`` term that ran)."""
    keep = []
    for i, (c, acc) in enumerate(zip(group.completions, group.accuracy or (), strict=True)):
        formats = [v[i] for k, v in group.components.items() if "format" in k and v[i] is not None]
        if is_correct(acc) and not (well_formed and (c.truncated or any(f <= 0 for f in formats))):
            keep.append(i)
    return keep


def keep_samples(groups: Sequence[RolloutGroup], cfg: Config) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The rejection-sampling rows: per prompt the passing completions (distinct texts) in ``order``."""
    g = cfg.generate
    rows: list[dict[str, Any]] = []
    kept: Counter[str] = Counter()
    total = 0
    for group in groups:
        total += group.group_size
        ranked = sorted(passing(group, g.well_formed), key=lambda i: (
            group.completions[i].num_tokens if g.order == "shortest" else -(group.rewards or ())[i], i))
        texts: list[str] = []
        for i in ranked:
            text = group.completions[i].text
            if text not in texts and len(texts) < g.keep_per_prompt:
                texts.append(text)
                rows.append(sample_row(group.prompt, group.completions[i], len(texts) - 1,
                                       score=(group.rewards or ())[i]))
        kept[source_of(group.prompt)] += len(texts)
    stats = {"samples": float(total), "kept": float(sum(kept.values())),
             "kept_frac": sum(kept.values()) / max(1, total)}
    return rows, {**stats, **{f"kept/{k}": float(v) for k, v in kept.items()}}


def keep_band(groups: Sequence[RolloutGroup], band: tuple[float, float]) -> tuple[list[dict[str, Any]],
                                                                                      dict[str, float]]:
    """The filter rows: prompts with low < pass rate < high (over the samples whose verifier ran)."""
    rows, kept, rates = [], Counter(), []
    for group in groups:
        ok = valid(group.accuracy or ())
        rate = sum(is_correct(a) for a in ok) / len(ok) if ok else math.nan
        rates.append(rate)
        if band[0] < rate < band[1]:
            rows.append({**prompt_to_row(replace(group.prompt, images=()), rate), "_images": group.prompt.images})
            kept[source_of(group.prompt)] += 1
    measured = [r for r in rates if math.isfinite(r)]
    stats = {"prompts": float(len(groups)), "kept": float(sum(kept.values())),
             "kept_frac": sum(kept.values()) / max(1, len(groups)),
             "pass_rate_mean": sum(measured) / max(1, len(measured))}
    return rows, {**stats, **{f"kept/{k}": float(v) for k, v in kept.items()}}


def source_of(prompt: Prompt) -> str:
    """The name per-source counts use: the procedural task or data set a prompt came from."""
    return prompt.reward_set or prompt.task


def sample_row(prompt: Prompt, completion: Completion, index: int, score: float) -> dict[str, Any]:
    """A kept sample as an SFT row: the prompt's row with ``meta.target`` = the completion's text."""
    row = prompt_to_row(replace(prompt, images=()))
    row["id"] = f"{prompt.prompt_id}-s{index}"
    row["meta"] = {**row["meta"], "target": completion.text, "source": source_of(prompt), "score": score,
                   "num_tokens": completion.num_tokens}
    return {**row, "_images": prompt.images}


def replay_rows(cfg: Config, num_kept: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``replay_share`` of the output drawn from ``generate.replay``, each with its SFT target."""
    from reinforced.training.sft import target_text

    share = cfg.generate.replay_share
    num = round(num_kept * share / (1 - share))
    if num == 0 or not cfg.generate.replay:
        return [], {"replay": 0.0}
    sampler = build_sampler(DataConfig(train=cfg.generate.replay, template=cfg.data.template), cfg.run.seed + 1)
    rows, counts = [], Counter()
    for k, prompt in enumerate(sampler.next(num)):
        row = prompt_to_row(replace(prompt, images=()))
        row["id"] = f"replay-{k}-{prompt.prompt_id}"
        row["meta"] = {**row["meta"], "target": target_text(prompt, cfg.generate.replay_targets), "source": "replay"}
        rows.append({**row, "_images": prompt.images})
        counts[source_of(prompt)] += 1
    return rows, {"replay": float(num), **{f"replay/{k}": float(v) for k, v in counts.items()}}


def write_rows(folder: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``folder/data.jsonl``; in-memory images saved as ``images/<row id>-<k>.png`` (paths relative to it)."""
    (folder / "images").mkdir(exist_ok=True)
    path = folder / "data.jsonl"
    with (folder / "data.jsonl.tmp").open("w", encoding="utf-8") as f:
        for row in rows:
            row = dict(row)
            images = row.pop("_images", ())
            if images:
                row["images"] = [_image_file(folder, im, f"{row['id']}-{k}") for k, im in enumerate(images)]
                row.pop("image", None)
            f.write(json.dumps(row, ensure_ascii=False, default=_plain) + "\n")
    (folder / "data.jsonl.tmp").replace(path)
    return path


def _image_file(folder: Path, image: Any, stem: str) -> str:
    if isinstance(image, (str, Path)):
        return str(Path(image).resolve())
    name = "images/" + re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + ".png"  # prompt ids may hold '/'"
    image.save(folder / name)
    return name


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, set)) else str(value)
