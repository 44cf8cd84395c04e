"""Objectives, aggregation, KL: algorithms.md section 8.3-8.5 vectors, micro-batch / data-parallel
invariance of loss and gradients, on-policy identity."""

from __future__ import annotations

import math

import pytest
import torch

from reinforced.algorithms import (
    AGGREGATORS,
    KL_ESTIMATORS,
    OBJECTIVES,
    ClipConfig,
    LossNormalizer,
    policy_loss,
    resolve_spec,
)

LENS = [2, 3, 1, 4]
ADV = [0.5, -0.5, -0.5, 0.5]


def batch_83() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = torch.zeros(4, 8, dtype=torch.bool)
    for i, n in enumerate(LENS):
        mask[i, :n] = True
    adv = torch.tensor(ADV).unsqueeze(1).expand(4, 8).clone()
    logprobs = torch.full((4, 8), -1.0, requires_grad=True)
    return logprobs, adv, mask


# ---- 8.3 aggregation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "weights"), [
    ("seq_mean_token_mean", 0.0, [0.125, 1 / 12, 0.25, 0.0625]),
    ("token_mean", -0.1, [0.1] * 4),
    ("seq_mean_token_sum", -0.25, [0.25] * 4),
    ("seq_sum_constant", -0.03125, [1 / 32] * 4),
])
def test_aggregation_values_and_gradient_weights(name: str, value: float, weights: list) -> None:
    logprobs, adv, mask = batch_83()
    per_token, _ = OBJECTIVES["ppo_clip"](logprobs, logprobs.detach(), adv, mask, ClipConfig())
    loss = AGGREGATORS[name](per_token, mask, LossNormalizer.from_mask(mask, constant=8))
    assert abs(float(loss.detach()) - value) < 1e-7
    loss.backward()
    for i, n in enumerate(LENS):
        expected = -ADV[i] * weights[i]
        torch.testing.assert_close(logprobs.grad[i, :n], torch.full((n,), expected))
        assert torch.all(logprobs.grad[i, n:] == 0)


def test_seq_sum_constant_requires_constant() -> None:
    _, adv, mask = batch_83()
    with pytest.raises(ValueError, match="constant"):
        AGGREGATORS["seq_sum_constant"](adv, mask)
    with pytest.raises(ValueError, match="loss_constant"):
        LossNormalizer.for_step(resolve_spec("dr_grpo"), mask)
    assert LossNormalizer.for_step(resolve_spec("dr_grpo"), mask, max_completion_len=64).constant == 64


def test_fully_masked_rows_do_not_dilute() -> None:
    per_token = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert float(AGGREGATORS["seq_mean_token_mean"](per_token, mask)) == 1.0
    assert float(AGGREGATORS["seq_mean_token_sum"](per_token, mask)) == 2.0


def random_batch(seed: int, n: int = 8, t: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return {
        "logits": torch.randn(n, t, generator=gen),
        "old": -torch.rand(n, t, generator=gen) - 0.5,
        "ref": -torch.rand(n, t, generator=gen) - 0.5,
        "adv": torch.randn(n, 1, generator=gen).expand(n, t).clone(),
        "entropy": torch.rand(n, t, generator=gen),
        "mask": mask,
    }


def full_and_split(spec_name: str, overrides: dict, splits: list[list[int]]) -> tuple[float, torch.Tensor, float, torch.Tensor]:
    spec = resolve_spec(spec_name, overrides)
    b = random_batch(0)
    norm = LossNormalizer.for_step(spec, b["mask"], max_completion_len=16)

    def run(rows: list[int], param: torch.Tensor, normalizer: LossNormalizer) -> torch.Tensor:
        lp = torch.nn.functional.logsigmoid(param[rows])  # a differentiable stand-in for model logprobs
        ref = b["ref"][rows] if spec.needs_reference else None
        loss, _ = policy_loss(spec, lp, b["old"][rows], b["adv"][rows], b["mask"][rows], normalizer, ref, b["entropy"][rows] * lp)
        return loss

    p_full = b["logits"].clone().requires_grad_(True)
    full = run(list(range(8)), p_full, norm)
    full.backward()
    p_split = b["logits"].clone().requires_grad_(True)
    total = 0.0
    for rows in splits:
        part = run(rows, p_split, norm)
        part.backward()
        total += float(part.detach())
    return float(full.detach()), p_full.grad, total, p_split.grad


AGG_OVERRIDES = [
    ("grpo", {"aggregation": "seq_mean_token_mean", "entropy_coef": 0.01}),
    ("grpo", {"aggregation": "token_mean", "entropy_coef": 0.01}),
    ("grpo", {"aggregation": "seq_mean_token_sum"}),
    ("dr_grpo", {}),
    ("dapo", {}),
    ("gspo", {}),
    ("opmd", {}),
    ("gpg", {}),
    ("rloo", {"objective": "cispo"}),
]


@pytest.mark.parametrize(("preset", "overrides"), AGG_OVERRIDES)
def test_micro_batch_invariance(preset: str, overrides: dict) -> None:
    full, g_full, total, g_split = full_and_split(preset, overrides, [[0, 1, 2], [3], [4, 5, 6, 7]])
    assert abs(full - total) < 1e-5
    torch.testing.assert_close(g_full, g_split, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("preset", "overrides"), AGG_OVERRIDES[:4])
def test_data_parallel_split_invariance(preset: str, overrides: dict) -> None:
    # Two "ranks" holding interleaved rows; each uses the step normaliser combined from both shards,
    # so the summed (all-reduced) gradient equals the single-process gradient.
    spec = resolve_spec(preset, overrides)
    b = random_batch(0)
    shards = [[0, 2, 4, 6], [1, 3, 5, 7]]
    combined = LossNormalizer.combine(
        LossNormalizer.for_step(spec, b["mask"][rows], max_completion_len=16) for rows in shards
    )
    assert combined == LossNormalizer.for_step(spec, b["mask"], max_completion_len=16)
    full, g_full, total, g_split = full_and_split(preset, overrides, shards)
    assert abs(full - total) < 1e-5
    torch.testing.assert_close(g_full, g_split, atol=1e-6, rtol=1e-5)


# ---- 8.4 clipped surrogate -------------------------------------------------------------------------------
CASES = [(1.5, 1.0), (1.25, 1.0), (0.5, 1.0), (1.5, -1.0), (0.7, -1.0), (5.0, -1.0)]


@pytest.mark.parametrize(("clip", "expected"), [
    (ClipConfig(), [1.2, 1.2, 0.5, -1.5, -0.8, -5.0]),
    (ClipConfig(eps_low=0.2, eps_high=0.28), [1.28, 1.25, 0.5, -1.5, -0.8, -5.0]),
    (ClipConfig(dual_clip_c=3.0), [1.2, 1.2, 0.5, -1.5, -0.8, -3.0]),
])
def test_clip_vectors(clip: ClipConfig, expected: list) -> None:
    ratio = torch.tensor([[r for r, _ in CASES]])
    adv = torch.tensor([[a for _, a in CASES]])
    loss, stats = OBJECTIVES["ppo_clip"](ratio.log(), torch.zeros_like(ratio), adv, torch.ones_like(ratio), clip)
    torch.testing.assert_close(-loss, torch.tensor([expected]))
    if clip.dual_clip_c is not None:
        assert stats["dual_clip_frac"] == pytest.approx(1 / 6)


def test_clip_gradients_and_fractions() -> None:
    ratio = torch.tensor([[1.5, 1.25, 0.5, 1.5, 0.7, 5.0]])
    logprobs = ratio.log().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    loss, stats = OBJECTIVES["ppo_clip"](logprobs, torch.zeros(1, 6), adv, torch.ones(1, 6), ClipConfig())
    loss.sum().backward()
    # Clipped tokens (1.5,+1), (1.25,+1), (0.7,-1) have no gradient; the others have -A r.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -0.5, 1.5, 0.0, 5.0]]))
    assert stats["clip_frac_high"] == pytest.approx(2 / 6) and stats["clip_frac_low"] == pytest.approx(1 / 6)


def test_ratio_cap() -> None:
    loss, _ = OBJECTIVES["ppo_clip"](torch.tensor([[math.log(6.0)]]), torch.zeros(1, 1), torch.tensor([[-1.0]]),
                                     torch.ones(1, 1), ClipConfig(ratio_cap=4.0))
    assert float(-loss) == pytest.approx(-4.0)


def test_gspo_sequence_ratio() -> None:
    logprobs = torch.tensor([[0.1, -0.2, 0.4]], requires_grad=True)
    clip = ClipConfig(eps_low=3e-4, eps_high=4e-4)
    loss, stats = OBJECTIVES["gspo_seq"](logprobs, torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3), clip)
    assert stats["ratio_mean"] == pytest.approx(1.105171, abs=1e-6)
    torch.testing.assert_close(-loss, torch.full((1, 3), 1.0004))  # clipped since A > 0
    loss2, _ = OBJECTIVES["gspo_seq"](logprobs, torch.zeros(1, 3), -torch.ones(1, 3), torch.ones(1, 3), clip)
    loss2.mean().backward()  # unclipped side: gradient of s_i A = s_i * mean_t grad log pi
    torch.testing.assert_close(logprobs.grad, torch.full((1, 3), 1.105171 / 3))


@pytest.mark.parametrize("name", ["ppo_clip", "gspo_seq", "cispo"])
def test_on_policy_gradient_equals_pg(name: str) -> None:
    b = random_batch(4)
    grads = []
    for objective in (name, "pg"):
        lp = b["old"].clone().requires_grad_(True)
        per_token, _ = OBJECTIVES[objective](lp, b["old"], b["adv"], b["mask"], ClipConfig())
        AGGREGATORS["seq_mean_token_mean"](per_token, b["mask"]).backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_opmd_gradient_matches_kimi_formula() -> None:
    lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -0.25, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([[0.5], [-0.5]]).expand(2, 3)
    tau = 2.0
    per_token, _ = OBJECTIVES["opmd"](lp, old, adv, mask, None, tau=tau)
    loss = AGGREGATORS["seq_mean_token_sum"](per_token, mask)
    loss.backward()
    d = torch.tensor([(-1.0 + 1.5) + (-2.0 + 1.0), (0.5) + (-0.25) + 0.0])  # summed log-ratios
    expected_value = ((-0.5 * (-3.0) + tau / 2 * d[0] ** 2) + (0.5 * (-1.5) + tau / 2 * d[1] ** 2)) / 2
    assert float(loss.detach()) == pytest.approx(float(expected_value))
    grad_rows = (-adv[:, 0] + tau * d) / 2  # per token of each row
    torch.testing.assert_close(lp.grad, grad_rows.unsqueeze(1) * mask.float())


# ---- 8.5 KL ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("p", "q", "k1", "k2", "k3"), [
    (0.5, 0.25, 0.693147, 0.240227, 0.193147),
    (0.25, 0.5, -0.693147, 0.240227, 0.306853),
])
def test_kl_vectors(p: float, q: float, k1: float, k2: float, k3: float) -> None:
    lp, ref = torch.tensor([[math.log(p)]]), torch.tensor([[math.log(q)]])
    for name, value in (("k1", k1), ("k2", k2), ("k3", k3)):
        assert float(KL_ESTIMATORS[name](lp, ref)) == pytest.approx(value, abs=1e-6)


def test_kl_estimators_against_exact_kl_in_expectation() -> None:
    # Samples from p: E[k1] = E[k3] = KL(p||q); a loop over the categorical support is the reference.
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    exact = sum(float(p[i] * (p[i] / q[i]).log()) for i in range(3))
    for name in ("k1", "k3"):
        values = KL_ESTIMATORS[name](p.log(), q.log())
        assert float((p * values).sum()) == pytest.approx(exact, abs=1e-6)
    assert torch.all(KL_ESTIMATORS["k3"](p.log(), q.log()) >= 0)


def test_kl_in_loss_adds_coef_times_aggregate() -> None:
    spec = resolve_spec("grpo")
    b = random_batch(5)
    norm = LossNormalizer.from_mask(b["mask"])
    with_kl, stats = policy_loss(spec, b["old"], b["old"], b["adv"], b["mask"], norm, b["ref"])
    without, _ = policy_loss(resolve_spec("grpo", {"kl.coef": 0.0}), b["old"], b["old"], b["adv"], b["mask"], norm)
    kl = AGGREGATORS["seq_mean_token_mean"](KL_ESTIMATORS["k3"](b["old"], b["ref"]), b["mask"], norm)
    assert float(with_kl - without) == pytest.approx(0.04 * float(kl), rel=1e-5)
    assert stats["clip_frac_low"] == 0.0 and stats["approx_kl"] == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(spec, b["old"], b["old"], b["adv"], b["mask"], norm)


def test_entropy_bonus_lowers_loss() -> None:
    spec = resolve_spec("dapo", {"entropy_coef": 0.1})
    b = random_batch(6)
    norm = LossNormalizer.from_mask(b["mask"])
    loss, stats = policy_loss(spec, b["old"], b["old"], b["adv"], b["mask"], norm, entropy=b["entropy"])
    base, _ = policy_loss(resolve_spec("dapo"), b["old"], b["old"], b["adv"], b["mask"], norm, entropy=b["entropy"])
    ent = AGGREGATORS["token_mean"](b["entropy"], b["mask"], norm)
    assert float(base - loss) == pytest.approx(0.1 * float(ent), rel=1e-5)
    assert stats["entropy"] == pytest.approx(float(b["entropy"][b["mask"]].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(spec, b["old"], b["old"], b["adv"], b["mask"], norm)
