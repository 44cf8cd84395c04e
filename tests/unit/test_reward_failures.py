"""A failed reward is counted and named, never a crash and never a wrong answer (issue 9).

Policy under test (rewards/compose.py): non-numbers, NaN, inf, exceptions and time-outs are reward
errors; a failed weighted term makes the sample's reward NaN, a failed verifier its accuracy NaN; the
advantage estimators leave NaN samples out of the group statistics and give them advantage 0; filters,
pass rates, length statistics and eval metrics leave them out; "correct" is one definition.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from reinforced.algorithms import ADVANTAGES
from reinforced.algorithms.filters import accuracy_stats, informative_groups, length_stats
from reinforced.evaluation.metrics import summarize
from reinforced.rewards import RewardComposer, register_reward
from reinforced.rewards.shaping import cosine_length, kimi_length
from reinforced.training.loop import rollout_stats
from reinforced.types import Completion, Prompt, RewardResult, RolloutGroup, is_correct

# what _test_returns gives, keyed by the completion text
RETURNS = {
    "str": "1.0", "list": [1.0], "tensor2": torch.ones(2), "nan": math.nan, "inf": -math.inf,
    "tensor_nan": torch.tensor(math.nan), "dict": {"score": 1.0},
    "bool": True, "int": 1, "tensor0": torch.tensor(0.25), "np": np.float32(0.75), "np_int": np.int64(0),
}
BAD = ["str", "list", "tensor2", "nan", "inf", "tensor_nan", "dict"]
CONVERTED = {"bool": 1.0, "int": 1.0, "tensor0": 0.25, "np": 0.75, "np_int": 0.0}


@register_reward("_test_returns")
def _returns(completion: str, prompt: Prompt) -> RewardResult:
    """r = whatever RETURNS says for the text's last word (test only)"""
    return RewardResult(score=RETURNS.get(completion.split()[-1], 0.0))  # type: ignore[arg-type]


@register_reward("_test_verifier")
def _verifier(completion: str, prompt: Prompt) -> RewardResult:
    """r = the text's first word as a number; raises on 'boom' (test only)"""
    if completion == "boom":
        raise RuntimeError("verifier crashed")
    return RewardResult(score=float(completion.split()[0]))


@register_reward("_test_not_a_result")
def _not_a_result(completion: str, prompt: Prompt) -> RewardResult:
    """r = a bare float instead of a RewardResult (test only)"""
    return 1.0  # type: ignore[return-value]


def group(texts, prompt_id="q7", lengths=None):
    lengths = lengths or [3] * len(texts)
    comps = tuple(Completion(t, tuple(range(n)), (0.0,) * n, "stop") for t, n in zip(texts, lengths, strict=True))
    return RolloutGroup(Prompt(prompt_id, "?", answer="1"), comps)


@pytest.mark.parametrize("kind", BAD)
def test_a_non_number_is_a_named_reward_error(kind, caplog):
    comp = RewardComposer([{"name": "_test_returns"}], use_worker=False)
    with caplog.at_level(logging.WARNING, logger="reinforced.rewards.compose"):
        [g], stats = comp.score([group(["ok", kind, "ok"])])
    assert math.isnan(g.rewards[1]) and g.rewards[0] == 0.0 == g.rewards[2]
    assert g.components["_test_returns"][1] is None
    assert stats["reward/errors"] == 1.0 and g.reward_errors == 1
    assert stats["reward/mean"] == 0.0  # over the two valid samples, the NaN is not a 0 nor a NaN mean
    [line] = [r.getMessage() for r in caplog.records]
    assert "'_test_returns'" in line and "q7#1" in line and "not a finite number" in line


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_numbers_bools_and_scalar_tensors_are_converted(kind):
    comp = RewardComposer([{"name": "_test_returns"}], use_worker=False)
    [g], stats = comp.score([group([kind])])
    assert g.rewards == (CONVERTED[kind],) and type(g.rewards[0]) is float
    assert stats["reward/errors"] == 0.0


def test_a_wrong_return_type_is_an_error_not_a_crash():
    comp = RewardComposer([{"name": "_test_not_a_result"}], use_worker=False)
    [g], stats = comp.score([group(["a"])])
    assert math.isnan(g.rewards[0]) and stats["reward/errors"] == 1.0


def test_worker_path_validates_too():
    with RewardComposer([{"name": "_test_returns"}], timeout_s=30.0) as comp:
        [g], stats = comp.score([group(["tensor0", "str", "nan"])])
    assert g.rewards[0] == 0.25 and math.isnan(g.rewards[1]) and math.isnan(g.rewards[2])
    assert stats["reward/errors"] == 2.0


def test_failed_verifier_is_nan_accuracy_and_skips_shaping():
    """The crashed sample is neither right nor wrong; kimi_length (needs ``correct``) is not run for it
    and is not a second error; the others are scored as usual."""
    comp = RewardComposer([{"name": "_test_verifier", "accuracy": True}, {"name": "kimi_length"}],
                          use_worker=False)
    [g], stats = comp.score([group(["1", "boom", "0", "0.75"], lengths=[2, 4, 6, 10])])
    assert math.isnan(g.accuracy[1]) and g.accuracy[0::2] == (1.0, 0.0) and g.accuracy[3] == 0.75
    assert math.isnan(g.rewards[1])
    # kimi lambdas over lengths [2, 4, 6, 10]: 0.5, 0.25, 0, -0.5; 0.75 is correct (> 0.5)
    assert g.rewards[0] == pytest.approx(1.5) and g.rewards[2] == 0.0 and g.rewards[3] == pytest.approx(0.25)
    assert stats["reward/errors"] == 1.0 and stats["accuracy/mean"] == pytest.approx(1.75 / 3)


def test_failed_unweighted_term_counts_but_keeps_the_reward():
    comp = RewardComposer([{"name": "_test_verifier", "accuracy": True},
                           {"name": "_test_returns", "weight": 0.0}], use_worker=False)
    [g], stats = comp.score([group(["1 str", "0 ok"])])
    assert g.rewards == (1.0, 0.0) and g.accuracy == (1.0, 0.0)  # weight 0: the failure changes no score
    assert stats["reward/errors"] == 1.0


# ------------------------------------------------------------------------------------------------------
# Advantages: NaN samples leave the group statistics and get 0.

GROUP_LEVEL = {"group_zscore": {"eps": 0.0}, "group_mean": {}, "rloo": {}, "opmd": {}}


@pytest.mark.parametrize("name", sorted(ADVANTAGES.names()))
def test_every_estimator_gives_failed_samples_zero_and_stays_finite(name):
    rewards = torch.tensor([[1.0, math.nan, 0.0, 0.5], [math.nan, math.nan, 1.0, 0.0], [math.nan, 1.0, math.nan, math.nan]])
    adv = ADVANTAGES[name](rewards)
    assert torch.isfinite(adv).all(), name
    assert (adv[~torch.isfinite(rewards)] == 0).all(), name
    assert (adv[2] == 0).all() or name in ("reinforce_pp",), name  # one valid sample: no baseline


@pytest.mark.parametrize("name", sorted(GROUP_LEVEL))
def test_group_estimators_on_valid_samples_equal_the_group_without_the_failure(name):
    fn, params = ADVANTAGES[name], GROUP_LEVEL[name]
    with_nan = fn(torch.tensor([[1.0, math.nan, 0.0, 0.5, 0.0]]), **params)
    without = fn(torch.tensor([[1.0, 0.0, 0.5, 0.0]]), **params)
    torch.testing.assert_close(with_nan[0, [0, 2, 3, 4]], without[0])
    assert with_nan[0, 1] == 0.0


def test_zscore_of_the_valid_samples_by_hand():
    adv = ADVANTAGES["group_zscore"](torch.tensor([[1.0, math.nan, 0.0, 0.0]]), eps=0.0)
    valid = torch.tensor([1.0, 0.0, 0.0])
    expected = (valid - valid.mean()) / valid.std()  # Bessel, like the estimator
    torch.testing.assert_close(adv[0, [0, 2, 3]], expected)


# ------------------------------------------------------------------------------------------------------
# Filters, statistics and eval leave failed samples out.

def test_dynamic_sampling_judges_on_valid_samples():
    acc = torch.tensor([[1.0, math.nan, 0.0], [1.0, 1.0, math.nan], [math.nan, math.nan, 0.0], [0.5, 0.5, 0.5]])
    assert informative_groups(acc).tolist() == [True, False, False, False]
    stats = accuracy_stats(acc)
    assert stats["frac_all_correct"] == 0.25  # [1, 1, nan]
    assert stats["frac_all_wrong"] == 0.5  # [nan, nan, 0] and [0.5] x 3 (0.5 is not correct)


def test_eval_metrics_leave_failed_samples_out():
    def scored(acc):
        return group(["x"] * len(acc)).scored(accuracy=tuple(acc), rewards=tuple(acc))

    m = summarize([scored([1.0, 0.0]), scored([math.nan, 1.0]), scored([0.0, math.nan])], "eval/t")
    assert m["eval/t/accuracy"] == 0.5  # first samples 1, (failed), 0
    assert m["eval/t/failed_frac"] == pytest.approx(2 / 6)
    assert m["eval/t/pass@2"] == 1.0  # only the first prompt has 2 scored samples, one correct
    assert m["eval/t/mean_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


# ------------------------------------------------------------------------------------------------------
# One definition of "correct".

@pytest.mark.parametrize("acc", [1.0, 0.75, 0.5, 0.25, 0.0])
def test_every_consumer_agrees_on_correct(acc):
    """Shaping, length stats, rollout stats, pass@k and the all-correct filter stat agree with is_correct."""
    right = is_correct(acc)
    p = Prompt("p", "q")
    # kimi: lambda of the shortest is 0.5 when correct, min(0, 0.5) = 0 when not
    assert (kimi_length("", p, num_tokens=1, correct=acc, group_num_tokens=[1, 3]).score == 0.5) == right
    assert (cosine_length("", p, num_tokens=0, correct=acc, max_tokens=10).score == 1.0) == right
    lens = length_stats(torch.tensor([7, 3]), torch.tensor([acc, math.nan]), torch.tensor([0, 0]))
    assert lens["len/correct_mean" if right else "len/incorrect_mean"] == 7.0
    assert lens["len/incorrect_mean" if right else "len/correct_mean"] == 0.0  # the NaN sample is on no side
    g = group(["a", "b"], lengths=[7, 3]).scored(accuracy=(acc, math.nan), rewards=(acc, math.nan))
    stats = rollout_stats([g])
    assert ("rollout/completion_len_correct" in stats) == right
    assert ("rollout/completion_len_wrong" in stats) == (not right)
    two = group(["a", "b"]).scored(accuracy=(acc, 0.0), rewards=(acc, 0.0))
    assert summarize([two], "e")["e/pass@2"] == (1.0 if right else 0.0)
    assert accuracy_stats(torch.tensor([[acc, acc]]))["frac_all_correct"] == float(right)
