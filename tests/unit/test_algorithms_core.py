"""Trainer-facing functions: advantages end to end, filters (DAPO, CPPO, overlong), critic learning."""

from __future__ import annotations

import itertools

import pytest
import torch

from reinforced.algorithms import (
    AdvantageInputs,
    LossNormalizer,
    compute_advantages,
    fill_batch,
    gae,
    group_keep_mask,
    mask_truncated,
    plateaued,
    prune_samples,
    resolve_spec,
    value_loss,
)
from reinforced.algorithms.filters import BatchNotFilled
from reinforced.algorithms.kl import k1


def inputs_for(rewards: torch.Tensor, lengths: list[int], t: int = 5, **extra: torch.Tensor) -> AdvantageInputs:
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    old = torch.full((len(lengths), t), -1.0)
    return AdvantageInputs(rewards=rewards, completion_mask=mask, old_logprobs=old, **extra)


def test_grpo_advantages_broadcast_over_loss_tokens() -> None:
    out = compute_advantages(resolve_spec("grpo"), inputs_for(torch.tensor([[1.0, 0, 0, 1]]), [2, 3, 1, 4]))
    assert out.returns is None
    expected = 0.5 / (0.5773503 + 1e-6)
    assert torch.allclose(out.advantages[0, :2], torch.tensor(expected)) and torch.all(out.advantages[0, 2:] == 0)
    assert torch.allclose(out.advantages[1, :3], torch.tensor(-expected))
    assert out.stats["reward/mean"] == 0.5 and out.stats["reward/frac_zero_std_groups"] == 0.0


def test_batch_zscore_token_weighted_through_core() -> None:
    spec = resolve_spec("reinforce_pp_baseline", {"advantage_params.ddof": 1})
    out = compute_advantages(spec, inputs_for(torch.tensor([[1.0, 0, 0, 1]]), [2, 3, 1, 4]))
    firsts = out.advantages[:, 0]
    torch.testing.assert_close(firsts, torch.tensor([0.774597, -1.161895, -1.161895, 0.774597]), atol=1e-5, rtol=0)


def test_kl_in_reward_is_subtracted_as_return_to_go() -> None:
    """kl.reward_form='token', OpenRLHF's RLOO: A_t = (R - b) - beta sum_{s >= t} KL_s (spec section 2.4)."""
    spec = resolve_spec("rloo", {"kl.reward_form": "token"})  # LOO baseline, k1 in the reward, beta 0.05
    gen = torch.Generator().manual_seed(0)
    ref = -torch.rand(4, 5, generator=gen)
    inp = inputs_for(torch.tensor([[1.0, 0, 0, 1]]), [2, 3, 1, 4], ref_logprobs=ref)
    out = compute_advantages(spec, inp)
    kl = 0.05 * k1(inp.old_logprobs, ref) * inp.completion_mask
    for i, n in enumerate([2, 3, 1, 4]):
        base = 2 / 3 if i in (0, 3) else -2 / 3
        for t in range(n):
            assert float(out.advantages[i, t]) == pytest.approx(base - float(kl[i, t:n].sum()), abs=1e-5)
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_advantages(spec, inputs_for(torch.tensor([[1.0, 0, 0, 1]]), [2, 3, 1, 4]))


def test_reinforce_pp_whitens_kl_shaped_returns() -> None:
    spec = resolve_spec("reinforce_pp")
    ref = -torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    out = compute_advantages(spec, inputs_for(torch.tensor([[1.0], [0.0], [0.0], [1.0]]), [2, 3, 1, 4], ref_logprobs=ref))
    m = out.advantages[torch.arange(5).unsqueeze(0) < torch.tensor([2, 3, 1, 4]).unsqueeze(1)]
    assert float(m.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(m.var(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_process_rewards_add_to_outcome() -> None:
    spec = resolve_spec("grpo", {"process_weight": 0.5})
    token_rewards = torch.zeros(2, 5)
    token_rewards[0, 1], token_rewards[1, 2] = 1.0, -1.0
    inp = inputs_for(torch.tensor([[1.0, 0.0]]), [5, 5], token_rewards=token_rewards)
    out = compute_advantages(spec, inp).advantages
    outcome = compute_advantages(spec, inputs_for(torch.tensor([[1.0, 0.0]]), [5, 5])).advantages
    z = 1.0 / (2 ** 0.5 + 1e-6)  # two step scores +-1: z-scores +-1/sqrt(2)
    torch.testing.assert_close(out[0] - outcome[0], 0.5 * torch.tensor([z, z, 0, 0, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1] - outcome[1], 0.5 * torch.tensor([-z, -z, -z, 0, 0]), atol=1e-5, rtol=0)


def test_critic_path_decoupled_gae_and_whitening() -> None:
    spec = resolve_spec("vc_ppo", {"critic.whiten_advantages": False})
    values = torch.tensor([[0.5, 0.6, 0.7]])
    inp = AdvantageInputs(torch.tensor([[1.0]]), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3), values=values)
    out = compute_advantages(spec, inp)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.46575, 0.385, 0.3]]))
    torch.testing.assert_close(out.returns, torch.ones(1, 3))
    whitened = compute_advantages(resolve_spec("vc_ppo"), inp).advantages
    assert float(whitened.mean()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="values"):
        compute_advantages(spec, AdvantageInputs(torch.tensor([[1.0]]), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3)))


def test_vapo_length_adaptive_lambda_through_core() -> None:
    spec = resolve_spec("vapo", {"critic.whiten_advantages": False})
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :20], mask[1, :40] = True, True
    values = torch.rand(2, 40, generator=torch.Generator().manual_seed(2))
    out = compute_advantages(spec, AdvantageInputs(torch.tensor([[1.0, 0.0]]), mask, torch.zeros(2, 40), values=values))
    rewards = torch.zeros(2, 40)
    rewards[0, 19], rewards[1, 39] = 1.0, 0.0
    expected, _ = gae(rewards, values, mask, 1.0, torch.tensor([0.0, 0.5]))  # 1 - 1/(0.05 l), l = 20, 40
    torch.testing.assert_close(out.advantages, expected)


def test_group_keep_mask_judges_accuracy() -> None:
    acc = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    keep, stats = group_keep_mask(resolve_spec("dapo"), acc)
    assert keep.tolist() == [True, True, False]
    assert stats["frac_zero_std_groups"] == pytest.approx(1 / 3) and stats["frac_all_correct"] == pytest.approx(1 / 3)
    keep_all, _ = group_keep_mask(resolve_spec("grpo"), acc)
    assert keep_all.all()


def test_dynamic_sampling_fills_batch_without_uniform_groups() -> None:
    gen = torch.Generator().manual_seed(3)
    counter = itertools.count()

    def draw(n: int) -> tuple[list[tuple[int, torch.Tensor]], torch.Tensor]:
        acc = (torch.rand(n, 4, generator=gen) < 0.15).float()  # mostly all-wrong groups
        return [(next(counter), a) for a in acc], group_keep_mask(resolve_spec("dapo"), acc)[0]

    kept, stats = fill_batch(draw, num_prompts=6, max_rounds=50)
    assert len(kept) == 6
    assert all(0 < float(a.sum()) < 4 for _, a in kept)
    assert stats["filter/rounds"] >= 2 and 0 < stats["filter/pass_rate"] < 1

    def none(n: int) -> tuple[list[int], torch.Tensor]:
        return list(range(n)), torch.zeros(n, dtype=torch.bool)

    with pytest.raises(BatchNotFilled, match="max_rounds"):
        fill_batch(none, num_prompts=2, max_rounds=3)
    with pytest.raises(ValueError, match="on_cap"):
        fill_batch(none, num_prompts=2, max_rounds=3, on_cap="pad")


def test_cppo_pruning_vector_and_allocation() -> None:
    spec = resolve_spec("cppo")
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.8]])
    out = compute_advantages(spec, inputs_for(rewards, [3, 3, 3, 3]))
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([0.976938, -1.321739, -0.172401, 0.517202]), atol=1e-5, rtol=0)
    keep, stats = prune_samples(spec, out.advantages, torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, dtype=torch.long))
    assert keep.tolist() == [True, True, False, False] and stats["prune/rate"] == 0.5
    # Two prompts: top-k per prompt, and with allocation P * factor * k == P * G.
    adv = torch.tensor([0.1, -0.9, 0.5, 0.2, 3.0, -2.0, 0.0, 1.0]).unsqueeze(1).expand(8, 5)
    keep2, _ = prune_samples(spec, adv, torch.ones(8, 5, dtype=torch.bool), torch.tensor([0] * 4 + [1] * 4))
    assert keep2.tolist() == [False, True, True, False, True, True, False, False]
    assert 4 * spec.prompts_per_step_factor * 2 == 4 * 4
    assert prune_samples(resolve_spec("grpo"), adv, torch.ones(8, 5), torch.zeros(8))[0].all()


def test_truncation_mask_leaves_normaliser() -> None:
    mask = torch.ones(3, 4, dtype=torch.bool)
    masked = mask_truncated(mask, torch.tensor([False, True, False]))
    assert LossNormalizer.from_mask(masked) == LossNormalizer(num_sequences=2, num_tokens=8)


def test_value_loss_clipping_and_stats() -> None:
    spec = resolve_spec("orz_ppo")  # value clip 0.2
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    old, returns, mask = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    loss, stats = value_loss(spec, values, old, returns, mask, LossNormalizer.from_mask(mask))
    # token 0: unclipped error 1.0 > clipped (0.2)^2, token 1: 0.01 both; seq mean of token mean, x 0.5
    assert stats["value_loss"] == pytest.approx(0.5 * (1.0 + 0.01) / 2)
    assert float(loss.detach()) == pytest.approx(stats["value_loss"])  # unweighted: vf_coef is the caller's
    loss2, stats2 = value_loss(spec, values, old, torch.tensor([[2.0, 0.0]]), mask, LossNormalizer.from_mask(mask))
    assert stats2["vf_clip_frac"] == 0.5  # moving towards 2.0 beyond old+0.2: the clipped branch is larger
    with pytest.raises(ValueError, match="no critic"):
        value_loss(resolve_spec("grpo"), values, old, returns, mask, LossNormalizer.from_mask(mask))


def toy_rollouts(gen: torch.Generator, n: int = 512, t: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A frozen 'policy' whose first token decides success odds: token 0 = 1 -> 90 %, 0 -> 10 %.

    Token features are the one-hot first token, so the true value of every token is 0.9 or 0.1.
    """
    first = (torch.rand(n, generator=gen) < 0.5).float()
    rewards = (torch.rand(n, generator=gen) < 0.1 + 0.8 * first).float()
    features = torch.stack([first, 1 - first], dim=1).unsqueeze(1).expand(n, t, 2)
    return features, rewards.view(n, 1), torch.ones(n, t, dtype=torch.bool)


def test_value_pretraining_lowers_loss_until_plateau_and_critic_learns() -> None:
    torch.manual_seed(0)
    spec = resolve_spec("vc_ppo", {"critic.value_clip": None, "critic.pretrain_patience": 5,
                                   "critic.pretrain_tolerance": 1e-3, "critic.pretrain_steps": 300})
    assert spec.critic is not None
    features, rewards, mask = toy_rollouts(torch.Generator().manual_seed(4))  # rollouts of the frozen policy
    critic = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(critic.weight)
    opt = torch.optim.SGD(critic.parameters(), lr=2.0)
    history: list[float] = []
    explained = []
    for _ in range(spec.critic.pretrain_steps):
        values = critic(features).squeeze(-1)  # [N, T]
        targets = compute_advantages(spec, AdvantageInputs(rewards, mask, torch.zeros_like(values), values=values.detach()))
        loss, stats = value_loss(spec, values, values.detach(), targets.returns, mask, LossNormalizer.from_mask(mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(stats["value_loss"])
        explained.append(stats["explained_variance"])
        if plateaued(history, spec.critic.pretrain_patience, spec.critic.pretrain_tolerance):
            break
    assert len(history) < spec.critic.pretrain_steps  # stopped on the plateau, before the cap
    assert history[-1] < 0.5 * history[0] and explained[-1] > 0.5 > explained[0]
    with torch.no_grad():
        v = critic(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).squeeze(-1)
    p_hi = float(rewards[features[:, 0, 0] == 1].mean())
    p_lo = float(rewards[features[:, 0, 0] == 0].mean())
    assert float(v[0]) == pytest.approx(p_hi, abs=0.03) and float(v[1]) == pytest.approx(p_lo, abs=0.03)


def test_rloo_folds_the_kl_into_the_reward_before_the_baseline() -> None:
    """RLOO paper / TRL ``rloo_trainer.py``: ``rlhf_reward = scores + non_score_reward`` (non_score_reward =
    -beta * KL summed over tokens), then ``baseline = (rlhf_reward.sum(0) - rlhf_reward) / (rloo_k - 1)``:
    one advantage per completion, the same on all its tokens."""
    spec = resolve_spec("rloo")
    assert spec.kl.reward_form == "sequence"
    gen = torch.Generator().manual_seed(0)
    ref = -torch.rand(4, 5, generator=gen)
    lengths = [2, 3, 1, 4]
    inp = inputs_for(torch.tensor([[1.0, 0, 0, 1]]), lengths, ref_logprobs=ref)
    out = compute_advantages(spec, inp)
    kl_sum = (k1(inp.old_logprobs, ref) * inp.completion_mask).sum(1)  # [4]
    shaped = torch.tensor([1.0, 0, 0, 1]) - 0.05 * kl_sum
    for i, n in enumerate(lengths):
        loo = shaped[i] - (shaped.sum() - shaped[i]) / 3
        torch.testing.assert_close(out.advantages[i, :n], loo.expand(n), atol=1e-6, rtol=0)
        assert torch.all(out.advantages[i, n:] == 0)


def test_sequence_kl_reward_form_needs_an_outcome_estimator() -> None:
    with pytest.raises(ValueError, match="kl.reward_form='sequence'"):
        resolve_spec("ppo", {"kl.reward_form": "sequence"})


@pytest.mark.parametrize("placement", ["loss", "reward"])
def test_kl_values_are_clamped_to_plus_minus_ten_by_default(placement: str) -> None:
    """verl ``core_algos.kl_penalty`` (low_var_kl: ``torch.clamp(kld, min=-10, max=10)``) and OpenRLHF
    ``models/utils.compute_approx_kl`` (``log_ratio.clamp(min=-10, max=10)``) bound every KL value."""
    from reinforced.algorithms import policy_loss

    lp = torch.tensor([[-0.1, -0.1, -0.1]])
    ref = torch.tensor([[-15.1, -0.1, -0.1]])  # token 0: k1 = 15, k3 = e^-15 + 15 - 1 ~ 14; others 0
    mask = torch.ones(1, 3, dtype=torch.bool)
    for clamp, first in ((None, 15.0), (10.0, 10.0)):
        spec = resolve_spec("grpo", {"kl.placement": placement, "kl.estimator": "k1" if placement == "reward" else "k3",
                                     "kl.coef": 1.0, "kl.clamp": clamp})
        if placement == "loss":
            _, stats = policy_loss(spec, lp, lp, torch.zeros(1, 3), mask, LossNormalizer.from_mask(mask), ref)
            expected = (14.0 if clamp is None else 10.0) / 3
            assert stats["kl_ref"] == pytest.approx(expected, abs=1e-4)
        else:
            rewards = torch.tensor([[1.0]])
            out = compute_advantages(spec, AdvantageInputs(rewards, mask, lp, ref_logprobs=ref))
            assert out.stats["kl_reward/mean"] == pytest.approx(first / 3, abs=1e-4)
    assert resolve_spec("grpo").kl.clamp == 10.0


def step_inputs(rewards: torch.Tensor) -> AdvantageInputs:
    token_rewards = torch.zeros(2, 5)
    token_rewards[0, 1], token_rewards[1, 2] = 1.0, -1.0
    return inputs_for(rewards, [5, 5], token_rewards=token_rewards)


def test_process_supervision_uses_only_normalised_step_rewards() -> None:
    """DeepSeekMath (arXiv 2402.03300) section 4.1.3, process supervision: step rewards are normalised over
    the group, ``r~ = (r - mean(R)) / std(R)``, and ``A_{i,t} = sum_{index(j) >= t} r~_index(j)``; the
    outcome reward plays no part, so changing it leaves the advantages unchanged."""
    spec = resolve_spec("grpo", {"process_mode": "process"})
    z = 1.0 / (2 ** 0.5 + 1e-6)
    for outcome in ([[1.0, 0.0]], [[0.0, 5.0]]):
        out = compute_advantages(spec, step_inputs(torch.tensor(outcome))).advantages
        torch.testing.assert_close(out, torch.tensor([[z, z, 0, 0, 0], [-z, -z, -z, 0, 0]]), atol=1e-5, rtol=0)


def test_outcome_mode_ignores_step_rewards() -> None:
    spec = resolve_spec("grpo", {"process_mode": "outcome"})
    with_steps = compute_advantages(spec, step_inputs(torch.tensor([[1.0, 0.0]]))).advantages
    without = compute_advantages(spec, inputs_for(torch.tensor([[1.0, 0.0]]), [5, 5])).advantages
    torch.testing.assert_close(with_steps, without)


def test_process_only_with_a_critic_has_no_outcome_at_the_last_token() -> None:
    spec = resolve_spec("orz_ppo", {"process_mode": "process", "critic.whiten_advantages": False})
    inp = step_inputs(torch.tensor([[1.0, 0.0]]))
    out = compute_advantages(spec, AdvantageInputs(**{**inp.__dict__, "values": torch.zeros(2, 5)}))
    # gamma = lambda = 1, V = 0: the return is the sum of the raw step scores at or after t
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1, 0, 0, 0], [-1, -1, -1, 0, 0]]))
