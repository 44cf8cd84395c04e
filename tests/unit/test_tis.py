"""Truncated importance sampling (algorithm.tis_cap) and the trainer/engine logprob gap.

TIS weights each token's objective by min(pi_old_trainer / pi_rollout, C) (Yao et al. 2025; verl's
tis_imp_ratio_cap); values here are computed by hand.
"""

import json
import math

import pytest
import torch

from reinforced.algorithms import LossNormalizer, policy_loss, resolve_spec
from reinforced.algorithms.core import tis_weights
from reinforced.config import load_config
from reinforced.training.loop import fit

OLD = torch.tensor([[0.0, -1.0, -2.0]])  # trainer's log-probs before the update
ROLLOUT = torch.tensor([[-1.0, -1.0, 0.0]])  # the engine's
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5]])
ADV = torch.ones(1, 3)
MASK = torch.ones(1, 3, dtype=torch.bool)


def _loss(spec, logprobs, rollout=ROLLOUT):
    norm = LossNormalizer.for_step(spec, MASK)
    return policy_loss(spec, logprobs, OLD, ADV, MASK, norm, rollout_logprobs=rollout)


def test_weights_are_the_capped_probability_ratio():
    w = tis_weights(OLD, ROLLOUT, cap=2.0)
    # exp(1) = 2.718 capped to 2; exp(0) = 1; exp(-2) below the cap is kept (truncation is one-sided)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, math.exp(-2.0)]]))
    assert not w.requires_grad


def test_tis_weights_the_pg_loss_token_by_token():
    spec = resolve_spec("grpo", {"objective": "pg", "aggregation": "token_mean", "kl.coef": 0.0, "tis_cap": 2.0})
    lp = LOGPROBS.clone().requires_grad_(True)
    loss, stats = _loss(spec, lp)
    w = [2.0, 1.0, math.exp(-2.0)]
    # pg per-token loss -A * logprob = [1, 2, 0.5], weighted, token mean over 3 tokens
    assert loss.item() == pytest.approx((1.0 * w[0] + 2.0 * w[1] + 0.5 * w[2]) / 3, rel=1e-6)
    loss.backward()
    assert torch.allclose(lp.grad, -torch.tensor([w]) / 3)  # the weight carries no gradient
    assert stats["tis_weight_mean"] == pytest.approx(sum(w) / 3, rel=1e-6)
    assert stats["tis_capped_frac"] == pytest.approx(1 / 3)


def test_off_by_default_and_equal_logprobs_change_nothing():
    off = resolve_spec("grpo", {"kl.coef": 0.0})
    assert off.tis_cap is None
    on = resolve_spec("grpo", {"kl.coef": 0.0, "tis_cap": 2.0})
    base, _ = _loss(off, LOGPROBS, rollout=None)
    same, stats = _loss(on, LOGPROBS, rollout=OLD)  # engine == trainer: every weight is 1
    assert same.item() == pytest.approx(base.item(), rel=1e-7)
    assert stats["tis_weight_mean"] == pytest.approx(1.0)


def test_missing_rollout_logprobs_and_bad_cap_are_errors():
    with pytest.raises(ValueError, match="rollout_logprobs"):
        _loss(resolve_spec("grpo", {"tis_cap": 2.0}), LOGPROBS, rollout=None)
    with pytest.raises(ValueError, match="tis_cap"):
        resolve_spec("grpo", {"tis_cap": 0.0})


def test_fit_with_tis_logs_a_near_zero_gap_for_the_builtin_engine(tmp_path):
    """The builtin fp32 engine samples from the training weights: its logprobs equal the trainer's, so the
    logged gap is ~0 and every TIS weight is ~1 (a real engine gap is measured in tests/vllm/)."""
    cfg = load_config(None, [
        "model.name_or_path=tiny-qwen2", "data.train=[{task: arithmetic}]", "data.template=plain",
        "eval.sets=[]", "rollout.group_size=4", "rollout.max_new_tokens=8", "training.num_prompts=2",
        "training.max_steps=2", "training.tensorboard=false", "run.num_threads=1",
        "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
        "algorithm.overrides={tis_cap: 2.0, kl.coef: 0.0}", f"run.output_dir={tmp_path}", "run.name=tis",
    ])
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["rollout/logprob_diff_max"] < 1e-4, r
        assert r["train/tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)
