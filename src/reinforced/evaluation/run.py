"""`reinforced eval` and `reinforced data filter`: run a model over datasets and score it.

Rows of any answer type can be mixed: unless the config names a reward set for a row, its verifier is chosen
by ``Prompt.answer_type`` (choice -> ``choice``, number/fraction/latex -> ``math_answer``, Countdown / Game of 24
-> ``expression_equals_target``, 4x4 Sudoku -> ``grid``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reinforced.config import Config, DataSource, RewardTerm
from reinforced.data import build_eval_sets, filter_by_pass_rate, write_jsonl
from reinforced.evaluation.metrics import eval_sampling, evaluate
from reinforced.models import Adapter, load_policy
from reinforced.rewards import RewardComposer
from reinforced.rollout import RolloutEngine, build_engine
from reinforced.training.setup import resolve_device
from reinforced.types import Prompt

VERIFIER_BY_ANSWER_TYPE = {
    "choice": "choice",
    "number": "math_answer",
    "fraction": "math_answer",
    "latex": "math_answer",
    "expression_equals_target": "expression_equals_target",
    "grid": "grid",
}


def with_verifier(prompt: Prompt) -> Prompt:
    """Select the reward set named after the row's answer type when the row names none."""
    if prompt.reward_set is None and prompt.answer_type in VERIFIER_BY_ANSWER_TYPE:
        return replace(prompt, reward_set=f"answer:{prompt.answer_type}")
    return prompt


def build_scorer(cfg: Config) -> RewardComposer:
    from reinforced.training.setup import task_reward_sets

    sets = {f"answer:{t}": (RewardTerm(name=name, accuracy=True),) for t, name in VERIFIER_BY_ANSWER_TYPE.items()}
    sets.update(task_reward_sets(cfg))
    return RewardComposer(cfg.rewards.terms, sets, timeout_s=cfg.rewards.timeout_s,
                          gate_accuracy_on_format=cfg.rewards.gate_accuracy_on_format)


def engine_and_scorer(cfg: Config) -> tuple[RolloutEngine, RewardComposer]:
    """The model of ``cfg`` on its device behind a rollout engine, and the answer-type-aware scorer."""
    policy = load_policy(cfg.model)
    policy.model.to(resolve_device(cfg.run.device))
    adapter = Adapter(policy, cfg.data.template)
    engine = build_engine(cfg.rollout.engine, adapter, autocast=cfg.training.autocast,
                          max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    return engine, build_scorer(cfg)


def evaluate_config(cfg: Config, data: list[str] | None = None) -> dict[str, float]:
    """Metrics of ``cfg.model`` on ``data`` (paths / built-in set names) or on ``cfg.eval.sets``."""
    if data:
        sets = tuple(DataSource(path=d, split="test") for d in data)
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"sets": sets})})
    prompts = build_eval_sets(cfg.eval, cfg.run.seed)
    if not prompts:
        raise ValueError("nothing to evaluate: give --data FILE... or eval.sets in the config")
    engine, scorer = engine_and_scorer(cfg)
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
    engine, scorer = engine_and_scorer(cfg)
    params = eval_sampling(cfg.rollout.temperature, k, cfg.rollout.max_new_tokens, cfg.rollout.stop, cfg.run.seed)

    def pass_rates(prompts: list[Prompt]) -> list[float]:
        groups = engine.generate([with_verifier(p) for p in prompts], params)
        scored, _ = scorer.score(groups)
        return [sum(g.accuracy or ()) / g.group_size for g in scored]

    try:
        prompts = build_eval_sets(cfg.eval.model_copy(update={"sets": cfg.data.train,
                                                              "max_prompts": 10**9}), cfg.run.seed)
        kept, _ = filter_by_pass_rate([p for ps in prompts.values() for p in ps], pass_rates, low=low, high=high,
                                      keep_extremes=keep_extremes)
    finally:
        scorer.close()
    return write_jsonl(out, [p for p, _ in kept], [r for _, r in kept])
