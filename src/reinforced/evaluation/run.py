"""`reinforced eval` and `reinforced data filter`: run a model over datasets and score it.

``reinforced eval`` takes a config (its ``model``) or a run directory (its ``config.yaml`` and the weights of
its latest checkpoint); ``eval_target`` tells them apart, so a run's own config.yaml never evaluates the base
model by accident. Results go to a JSON file as well as the screen (``write_results``).

Rows of any answer type can be mixed: unless the config names a reward set for a row, its verifier is chosen
by ``Prompt.answer_type`` (choice -> ``choice``, number/fraction/latex -> ``math_answer``, Countdown / Game of 24
-> ``expression_equals_target``, 4x4 Sudoku -> ``grid``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reinforced.config import Config, ConfigError, DataSource, RewardTerm
from reinforced.data import filter_by_pass_rate, write_jsonl
from reinforced.data.checks import check_gold, check_prompt_lengths
from reinforced.data.sources import Source, build_eval_sources
from reinforced.evaluation.metrics import eval_sampling, evaluate
from reinforced.models import Adapter, load_policy
from reinforced.rewards import RewardComposer
from reinforced.rollout import RolloutEngine, build_engine
from reinforced.training.setup import resolve_device
from reinforced.types import Prompt, valid

VERIFIER_BY_ANSWER_TYPE = {
    "choice": "choice",
    "number": "math_answer",
    "fraction": "math_answer",
    "latex": "math_answer",
    "expression_equals_target": "expression_equals_target",
    "grid": "grid",
}


RUN_MARKERS = ("checkpoints", "metrics.jsonl", "algorithm.txt")  # what `reinforced train` writes beside config.yaml


@dataclass(frozen=True)
class EvalTarget:
    """What ``reinforced eval`` evaluates: a config file, and for a run its latest checkpoint's weights."""

    config: Path | None
    run_dir: Path | None = None
    weights: Path | None = None
    step: int | None = None


def is_run_dir(path: Path) -> bool:
    """A folder written by ``reinforced train``: ``config.yaml`` beside checkpoints or metrics."""
    return path.is_dir() and (path / "config.yaml").is_file() and any((path / m).exists() for m in RUN_MARKERS)


def eval_target(path: Path | None) -> EvalTarget:
    """A run directory (or its ``config.yaml``) -> the run's config and latest checkpoint; else the config itself.

    A run without a checkpoint is an error: its config names only the base model, which is not what was trained.
    """
    if path is None:
        return EvalTarget(config=None)
    run_dir = path if path.is_dir() else path.parent if path.name == "config.yaml" else None
    if run_dir is None or not is_run_dir(run_dir):
        if path.is_dir():
            raise ConfigError(f"{path} is a folder but not a run directory (no config.yaml beside checkpoints/ "
                              "or metrics.jsonl); give a config file or a run directory")
        return EvalTarget(config=path)
    from reinforced.training.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise ConfigError(f"run {run_dir} has no checkpoint under {run_dir / 'checkpoints'} to evaluate; its "
                          "config.yaml names only the base model. Train it (checkpoints are written at the end), "
                          "or evaluate the base model explicitly with model.name_or_path=...")
    return EvalTarget(config=run_dir / "config.yaml", run_dir=run_dir, weights=latest / "model",
                      step=int(latest.name.removeprefix("step-")))


def default_results_path(cfg: Config, target: EvalTarget) -> Path:
    """``<run>/eval/step-N.json`` for a run's checkpoint, else ``<output_dir>/<run.name>/eval/results.json``."""
    if target.run_dir is not None:
        return target.run_dir / "eval" / f"step-{target.step}.json"
    return Path(cfg.run.output_dir) / cfg.run.name / "eval" / "results.json"


def write_results(path: Path, cfg: Config, metrics: dict[str, float], target: EvalTarget) -> Path:
    """The metrics plus what produced them (weights, run, step, sets, sampling) as one JSON document."""
    record: dict[str, Any] = {
        "model": cfg.model.name_or_path, "run_dir": None if target.run_dir is None else str(target.run_dir),
        "step": target.step, "sets": [s.model_dump(mode="json", exclude_defaults=True) for s in cfg.eval.sets],
        "eval": cfg.eval.model_dump(mode="json", exclude={"sets"}), "seed": cfg.run.seed,
        "metrics": {k: v if math.isfinite(v) else None for k, v in metrics.items()},  # NaN is not JSON
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    return path


def with_verifier(prompt: Prompt) -> Prompt:
    """Select the reward set named after the row's answer type when the row names none."""
    if prompt.reward_set is None and prompt.answer_type in VERIFIER_BY_ANSWER_TYPE:
        return replace(prompt, reward_set=f"answer:{prompt.answer_type}")
    return prompt


def scorer_sets(cfg: Config) -> dict[str, tuple[RewardTerm, ...]]:
    """Reward sets of evaluation: one verifier per answer type, the tasks' sets and the config's."""
    from reinforced.training.setup import task_reward_sets

    sets = {f"answer:{t}": (RewardTerm(name=name, accuracy=True),) for t, name in VERIFIER_BY_ANSWER_TYPE.items()}
    sets.update(task_reward_sets(cfg))
    return sets


def build_scorer(cfg: Config) -> RewardComposer:
    return RewardComposer(cfg.rewards.terms, scorer_sets(cfg), timeout_s=cfg.rewards.timeout_s,
                          gate_accuracy_on_format=cfg.rewards.gate_accuracy_on_format)


def engine_and_scorer(cfg: Config, sources: Sequence[Source] = ()) -> tuple[RolloutEngine, RewardComposer]:
    """The model of ``cfg`` on its device behind a rollout engine, and the answer-type-aware scorer.

    ``sources``: data to check against ``rollout.max_prompt_tokens`` with this model's tokenizer first.
    """
    policy = load_policy(cfg.model)
    policy.model.to(resolve_device(cfg.run.device))
    adapter = Adapter(policy, cfg.data.template)
    check_prompt_lengths(sources, lambda p: len(adapter.encode(p).input_ids), cfg.rollout.max_prompt_tokens)
    engine = build_engine(cfg.rollout.engine, adapter, autocast=cfg.training.autocast,
                          max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    return engine, build_scorer(cfg)


def with_eval_data(cfg: Config, data: list[str] | None) -> Config:
    """``cfg`` evaluating ``data`` (paths / built-in set names, test split) instead of ``cfg.eval.sets``."""
    if not data:
        return cfg
    sets = tuple(DataSource(path=d, split="test") for d in data)
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"sets": sets})})


def evaluate_config(cfg: Config, data: list[str] | None = None) -> dict[str, float]:
    """Metrics of ``cfg.model`` on ``data`` (paths / built-in set names) or on ``cfg.eval.sets``."""
    cfg = with_eval_data(cfg, data)
    sources = build_eval_sources(cfg.eval, cfg.run.seed)
    if not sources:
        raise ValueError("nothing to evaluate: give --data FILE... or eval.sets in the config")
    check_gold(sources, cfg.rewards.terms, scorer_sets(cfg))  # before the model loads
    prompts = {s.name: list(s.pool or ()) for s in sources}
    engine, scorer = engine_and_scorer(cfg, sources)
    e, r = cfg.eval, cfg.rollout
    params = eval_sampling(e.temperature, e.num_samples, e.max_new_tokens or r.max_new_tokens, r.stop,
                           seed=cfg.run.seed)
    try:
        sets = {name: [with_verifier(p) for p in ps] for name, ps in prompts.items()}
        metrics, _ = evaluate(engine, scorer, sets, params)
    finally:
        scorer.close()
    return metrics


def filter_config(cfg: Config, out: str, k: int, low: float, high: float, keep_extremes: bool = False) -> Path:
    """Offline curation (Reason-RFT / Open-Reasoner-Zero): keep training prompts with low < pass rate < high.

    Samples ``k`` completions per prompt of ``cfg.data.train`` with ``cfg.model`` and writes the kept rows,
    each with its measured ``pass_rate`` in ``meta`` (it can seed a curriculum).
    """
    sources = build_eval_sources(cfg.eval.model_copy(update={"sets": cfg.data.train, "max_prompts": 10**9}),
                                 cfg.run.seed)
    check_gold(sources, cfg.rewards.terms, scorer_sets(cfg))
    engine, scorer = engine_and_scorer(cfg, sources)
    params = eval_sampling(cfg.rollout.temperature, k, cfg.rollout.max_new_tokens, cfg.rollout.stop, cfg.run.seed)

    def pass_rates(prompts: list[Prompt]) -> list[float]:
        groups = engine.generate([with_verifier(p) for p in prompts], params)
        scored, _ = scorer.score(groups)
        # pass rate over the samples whose verifier ran (a failed one is not a wrong one); NaN if none did
        rates = [valid(g.accuracy or ()) for g in scored]
        return [sum(r) / len(r) if r else math.nan for r in rates]

    try:
        kept, _ = filter_by_pass_rate([p for s in sources for p in s.pool or ()], pass_rates, low=low, high=high,
                                      keep_extremes=keep_extremes)
    finally:
        scorer.close()
    return write_jsonl(out, [p for p, _ in kept], [r for _, r in kept])
