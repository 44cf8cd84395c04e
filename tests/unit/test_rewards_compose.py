"""RewardComposer: weights, accuracy, None handling, reward sets, errors, time limits, hacking metrics."""

from __future__ import annotations

import math
import time

import pytest

from reinforced.rewards import REWARDS, RewardComposer, describe_rewards, register_reward
from reinforced.types import Completion, Prompt, RewardResult, RolloutGroup, StepScore


def group(texts, answer="4", reward_set=None, lengths=None, prompt_id="p"):
    lengths = lengths or [5] * len(texts)
    comps = tuple(Completion(t, tuple(range(n)), tuple([0.0] * n), "stop") for t, n in zip(texts, lengths, strict=True))
    return RolloutGroup(Prompt(prompt_id, "2+2?", answer=answer, reward_set=reward_set), comps)


@register_reward("_test_sleep")
def _sleep(completion: str, prompt: Prompt, seconds: float = 60.0) -> RewardResult:
    """r = 1 after sleeping (test only)"""
    if "hang" in completion:
        time.sleep(seconds)
    return RewardResult(score=1.0)


@register_reward("_test_raise")
def _raise(completion: str, prompt: Prompt) -> RewardResult:
    """r = error on 'boom' (test only)"""
    if "boom" in completion:
        raise RuntimeError("boom")
    return RewardResult(score=0.5, steps=(StepScore(0, 2, 1.0),))


@register_reward("_test_none")
def _none(completion: str, prompt: Prompt) -> RewardResult:
    """r = None (does not apply; test only)"""
    return RewardResult(score=None)


TERMS = [{"name": "math_answer", "accuracy": True}, {"name": "format", "weight": 0.1}]
GOOD = "<think>2+2</think><answer>4</answer>"
WRONG = "<think>2+2</think><answer>5</answer>"
BARE = "<answer>4</answer>"


@pytest.fixture(scope="module")
def worker_composer():
    comp = RewardComposer(TERMS + [{"name": "_test_sleep", "weight": 0.0}], timeout_s=1.0)
    comp.timeout_s = comp.worker.timeout_s = 60.0  # warm-up: the child's first imports are not under test
    comp.score([group([GOOD])])
    comp.timeout_s = comp.worker.timeout_s = 1.0
    yield comp
    comp.close()


def test_weights_accuracy_components_in_process():
    comp = RewardComposer(TERMS, use_worker=False)
    [g], stats = comp.score([group([GOOD, WRONG, BARE, "nothing"])])
    assert g.rewards == pytest.approx((1.1, 0.1, 1.0, 0.0))
    assert g.accuracy == (1.0, 0.0, 1.0, 0.0)
    assert g.components["format"] == (1.0, 1.0, 0.0, 0.0)
    assert stats["reward/mean"] == pytest.approx(0.55)
    assert stats["reward/math_answer"] == pytest.approx(0.5)
    assert stats["accuracy/mean"] == pytest.approx(0.5)
    assert stats["reward/errors"] == 0.0
    assert stats["hacking/empty_answer_frac"] == pytest.approx(0.25)


def test_gate_accuracy_on_format():
    comp = RewardComposer(TERMS, gate_accuracy_on_format=True, use_worker=False)
    [g], _ = comp.score([group([GOOD, BARE])])
    assert g.accuracy == (1.0, 0.0) and g.rewards == pytest.approx((1.1, 0.0))
    assert g.components["math_answer"] == (1.0, 1.0)  # raw component kept for logging
    # a set without a format term still gates, on an implicit unweighted format check
    comp2 = RewardComposer([{"name": "math_answer", "accuracy": True}], gate_accuracy_on_format=True, use_worker=False)
    [g2], _ = comp2.score([group([GOOD, BARE])])
    assert g2.rewards == (1.0, 0.0) and "format" not in g2.components


def test_reward_sets_and_unknown_set():
    comp = RewardComposer(TERMS, sets={"exact": [{"name": "exact_match", "weight": 2.0, "accuracy": True}]},
                          use_worker=False)
    [a, b], _ = comp.score([group([GOOD]), group(["<answer> 4 </answer>"], reward_set="exact")])
    assert a.rewards == pytest.approx((1.1,)) and b.rewards == (2.0,)
    assert set(b.components) == {"exact_match"}
    with pytest.raises(ValueError, match="'nope'.*valid: default, exact"):
        comp.score([group([GOOD], reward_set="nope")])


def test_construction_errors():
    with pytest.raises(ValueError, match="unknown reward 'math_answr'; did you mean 'math_answer'"):
        RewardComposer([{"name": "math_answr"}], use_worker=False)
    with pytest.raises(ValueError, match="no parameter 'fallbak'.*did you mean 'fallback'"):
        RewardComposer([{"name": "math_answer", "params": {"fallbak": "none"}}], use_worker=False)
    with pytest.raises(ValueError, match="bad value 'middle' for 'fallback'"):
        RewardComposer([{"name": "math_answer", "params": {"fallback": "middle"}}], use_worker=False)
    with pytest.raises(ValueError, match="'num_tokens' is filled from the rollout"):
        RewardComposer([{"name": "overlong", "params": {"num_tokens": 3, "max_tokens": 8}}], use_worker=False)
    with pytest.raises(ValueError, match="needs parameter 'max_tokens'"):
        RewardComposer([{"name": "overlong"}], use_worker=False)
    with pytest.raises(ValueError, match="must be a number"):
        RewardComposer([{"name": "numeric", "params": {"rel_tol": "big"}}], use_worker=False)


def test_errors_and_none_and_steps():
    comp = RewardComposer(TERMS + [{"name": "_test_raise", "weight": 2.0}, {"name": "_test_none"}],
                          use_worker=False)
    [g], stats = comp.score([group([GOOD, "boom"])])
    assert g.components["_test_raise"] == (0.5, None)
    assert g.components["_test_none"] == (None, None)  # "not applicable" contributes 0, no error
    # the weighted term that raised makes the sample's reward NaN (left out of its group), not a 0
    assert g.rewards[0] == pytest.approx(1.1 + 1.0) and math.isnan(g.rewards[1])
    assert g.accuracy == (1.0, 0.0)  # the verifier itself ran: "boom" is a wrong answer
    assert stats["reward/mean"] == pytest.approx(2.1)  # over the valid samples only
    assert g.reward_errors == 1 and stats["reward/errors"] == 1.0
    assert stats["reward/error_frac"] == pytest.approx(1 / 8)
    assert g.step_rewards[0] == (StepScore(0, 2, 2.0),) and g.step_rewards[1] == ()


def test_worker_timeout_and_recovery(worker_composer):
    groups = [group([GOOD, "hang " + GOOD, WRONG])]
    t0 = time.monotonic()
    [g], stats = worker_composer.score(groups)
    assert time.monotonic() - t0 < 8.0
    assert g.components["_test_sleep"] == (1.0, None, 1.0)
    assert g.rewards == pytest.approx((1.1, 1.0, 0.1))  # the other terms of the hung sample survive
    assert stats["reward/errors"] == 1.0 and worker_composer.worker.restarts >= 1
    [g2], _ = worker_composer.score([group([GOOD])])  # the respawned worker keeps serving
    assert g2.rewards == pytest.approx((1.1,))


def test_worker_speed(worker_composer):
    texts = [f"<think>step {i}</think><answer>{i % 5}</answer>" for i in range(32)]
    worker_composer.score([group(texts[:8])])  # warm
    t0 = time.monotonic()
    [g], _ = worker_composer.score([group(texts)])
    assert time.monotonic() - t0 < 0.5
    assert sum(g.accuracy) == 6  # i % 5 == 4 for i in 4, 9, ..., 29


def test_hacking_detectors():
    comp = RewardComposer([{"name": "math_answer", "accuracy": True}, {"name": "tag_count", "weight": 5.0}],
                          use_worker=False)
    texts = [GOOD, GOOD, "<answer></answer><answer></answer><think>", "<think>a</think>"]
    [g], stats = comp.score([group(texts)])
    assert stats["hacking/identical_frac"] == pytest.approx(0.25)
    assert stats["hacking/tag_spam_frac"] == pytest.approx(0.25)
    assert stats["hacking/empty_answer_frac"] == pytest.approx(0.5)
    # tag_count gives 5*1.0, 5*1.0, 5*0.25, 5*0.5 vs math 1, 1: dominant share = 13.75 / 15.75
    assert stats["hacking/dominant_share"] == pytest.approx(13.75 / 15.75)
    # a wrong answer with perfect tags outscoring a right answer is a discordant pair
    [g], stats = comp.score([group([GOOD.replace("<think>2+2</think>", ""), "<think>x</think><answer>5</answer>"])])
    assert g.accuracy == (1.0, 0.0) and stats["hacking/acc_reward_discordance"] == 1.0


def test_describe_rewards_lists_formulas():
    names = dict(describe_rewards())
    for name in ("format", "math_answer", "exact_match", "choice", "numeric", "grid", "label"):
        assert name in names and names[name]
    assert "math_verify" in names["math_answer"]
    assert len(names) == len(REWARDS)


ADVERSARIAL = {
    "open_answer": "<answer>" * (1 << 17),  # 1 MB of unclosed tags: quadratic under <answer>(.*?)</answer>
    "open_think": "<think>" * (1 << 17),
    "mixed_case": "<ANSWER>x" * (1 << 17),
    "inner_spaces": " " * (1 << 20) + "x",  # quadratic under a (?:\\s|...)+\\Z search
    "eos_run": "<|im_end|>" * (1 << 17),
    "eos_spaced": "</s> " * (1 << 18),
    "open_boxed": "\\boxed{" * (1 << 17),
    "digits": "1," * (1 << 19),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_trainer_side_parsing_is_linear(name):
    """What the trainer process parses itself (hacking metrics, answer extraction for judges) finishes
    1 MB of adversarial text in linear time: there is no time limit around it."""
    from reinforced.rewards import answer_blocks, extract_answer, reasoning_text
    from reinforced.rewards.base import strip_eos
    from reinforced.rewards.compose import hacking_stats

    text = ADVERSARIAL[name]
    g = group([text, GOOD]).scored(rewards=(0.0, 1.0), accuracy=(0.0, 1.0))
    t0 = time.perf_counter()
    for fallback in ("none", "last_number", "last_line", "whole"):
        extract_answer(text, fallback)
    reasoning_text(text), answer_blocks(text), strip_eos(text)
    stats = hacking_stats([g], {"a": 1.0})
    # linear: ~0.1-0.6 s here; the quadratic regexes took 23 s on 128 KB (~25 min on 1 MB). 5 s leaves
    # room for a loaded CI machine and still fails any super-linear parser by orders of magnitude.
    assert time.perf_counter() - t0 < 5.0, name
    assert 0.0 <= stats["hacking/empty_answer_frac"] <= 1.0


def test_linear_tag_pairing_matches_the_non_greedy_regex():
    """tag_blocks pairs tags exactly like re.findall('<answer>(.*?)</answer>', re.I | re.S)."""
    import random
    import re

    from reinforced.rewards import answer_blocks, reasoning_text

    pieces = ["<answer>", "</answer>", "<ANSWER>", "</Answer>", "x", "\n", "<think>", "</think>", "<answer"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert answer_blocks(text) == re.findall(r"<answer>(.*?)</answer>", text, re.S | re.I), text
        thinks = re.findall(r"<think>(.*?)</think>", text, re.S | re.I)
        if thinks:
            assert reasoning_text(text) == thinks[-1].strip(), text
    assert answer_blocks("<answer>a</answer><answer>b") == ["a"]
    assert reasoning_text("İİ <answer>4</answer>") == "İİ"  # no lower(): offsets stay exact


def test_many_process_steps_place_fast():
    from reinforced.rewards import step_token_rewards

    ends = list(range(1, 20_001))  # 20k tokens, one character each
    steps = [StepScore(i, i + 1, 1.0) for i in range(20_000)]
    t0 = time.perf_counter()
    out = step_token_rewards(steps, ends)
    assert time.perf_counter() - t0 < 5.0  # a scan per step would be 4e8 Python steps: minutes
    assert out == [1.0] * 20_000
    assert step_token_rewards([StepScore(0, 10**9, 2.0)], [1, 2]) == [0.0, 2.0]  # beyond the text: last token
