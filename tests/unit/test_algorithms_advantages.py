"""Advantage estimators: algorithms.md section 8.1, 8.2, 8.6 vectors, loop references, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from reinforced.algorithms import ADVANTAGES, adaptive_lambda, gae, masked_whiten, process_advantages
from reinforced.algorithms.advantages import batch_zscore, reinforce_pp

G1 = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
G12 = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]])
G123 = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
LENS = torch.tensor([[2, 3, 1, 4]])


def close(a: torch.Tensor, b: list, tol: float = 1e-6) -> None:
    torch.testing.assert_close(a.double(), torch.tensor(b, dtype=torch.float64).reshape(a.shape), atol=tol, rtol=0)


# ---- 8.1 one group -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("group_zscore", {"eps": 0.0}, [0.866025, -0.866025, -0.866025, 0.866025]),
        ("group_zscore", {"eps": 1e-4}, [0.865875, -0.865875, -0.865875, 0.865875]),
        ("group_zscore", {"eps": 1e-6}, [0.866024, -0.866024, -0.866024, 0.866024]),
        ("group_zscore", {"eps": 0.0, "ddof": 0}, [1, -1, -1, 1]),
        ("group_mean", {}, [0.5, -0.5, -0.5, 0.5]),
        ("rloo", {}, [2 / 3, -2 / 3, -2 / 3, 2 / 3]),
        ("reinforce_pp", {}, [0.866025, -0.866025, -0.866025, 0.866025]),
        ("opmd", {}, [0.5, -0.5, -0.5, 0.5]),
        ("opmd", {"baseline": "log_mean_exp", "tau": 1.0}, [0.379885, -0.620115, -0.620115, 0.379885]),
    ],
)
def test_one_group_vectors(name: str, params: dict, expected: list) -> None:
    close(ADVANTAGES[name](G1, **params), expected, tol=2e-6)


def test_group_zscore_verl_eps_exact_digits() -> None:
    out = ADVANTAGES["group_zscore"](G1, eps=1e-6)
    assert abs(float(out[0, 0]) - 0.5 / (math.sqrt(1 / 3) + 1e-6)) < 1e-7


@pytest.mark.parametrize(("tau", "b"), [(1.0, 0.620115), (0.5, 0.716890), (10.0, 0.512495)])
def test_opmd_log_mean_exp_baseline(tau: float, b: float) -> None:
    out = ADVANTAGES["opmd"](G1, baseline="log_mean_exp", tau=tau)
    close(out, [1 - b, -b, -b, 1 - b], tol=1e-6)


@pytest.mark.parametrize(("ddof", "expected"), [
    (1, [0.774597, -1.161895, -1.161895, 0.774597]),  # verl, Bessel token variance 0.266667
    (0, [0.816497, -1.224745, -1.224745, 0.816497]),  # OpenRLHF, population variance 0.24
])
def test_token_weighted_whitening(ddof: int, expected: list) -> None:
    close(reinforce_pp(G1, lengths=LENS, ddof=ddof), expected, tol=1e-5)
    # batch_zscore equals reinforce_pp for one group: whitening is shift invariant.
    close(batch_zscore(G1, lengths=LENS, ddof=ddof), expected, tol=1e-5)


# ---- 8.2 several groups --------------------------------------------------------------------------------
def test_batch_vectors() -> None:
    close(ADVANTAGES["group_zscore"](G12, eps=0.0)[1], [0.5, 0.5, 0.5, -1.5])
    close(ADVANTAGES["group_mean"](G12)[1], [0.25, 0.25, 0.25, -0.75])
    close(ADVANTAGES["rloo"](G12)[1], [1 / 3, 1 / 3, 1 / 3, -1.0])
    close(ADVANTAGES["batch_zscore"](G12), [1, -1, -1, 1, 0.5, 0.5, 0.5, -1.5], tol=1e-6)
    rpp = ADVANTAGES["reinforce_pp"](G12)
    assert abs(float(rpp[0, 0]) - 0.724569) < 1e-6 and abs(float(rpp[0, 1]) + 1.207615) < 1e-6


def test_uniform_group_gives_zeros_and_gpg_alpha() -> None:
    for name in ("group_zscore", "group_mean", "rloo"):
        assert torch.all(ADVANTAGES[name](G123)[2] == 0)
    gpg = ADVANTAGES["gpg"](G123)
    close(gpg, [0.75, -0.75, -0.75, 0.75, 0.375, 0.375, 0.375, -1.125, 0, 0, 0, 0])
    gpg_verl = ADVANTAGES["gpg"](G123, alpha="responses")
    close(gpg_verl[:2], [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0], tol=1e-6)


# ---- loop references and invariances -------------------------------------------------------------------
def loop_reference(name: str, rewards: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(rewards, dtype=torch.float64)
    for p, row in enumerate(rewards.double().tolist()):
        g = len(row)
        mean = sum(row) / g
        var = sum((x - mean) ** 2 for x in row) / (g - 1)
        for j, x in enumerate(row):
            if name == "group_zscore":
                out[p, j] = (x - mean) / (math.sqrt(var) + 1e-6)
            elif name == "group_mean":
                out[p, j] = x - mean
            elif name == "rloo":
                out[p, j] = x - (sum(row) - x) / (g - 1)
    return out


@pytest.mark.parametrize("name", ["group_zscore", "group_mean", "rloo"])
def test_vectorised_matches_loop(name: str) -> None:
    rewards = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ADVANTAGES[name](rewards).double(), loop_reference(name, rewards), atol=1e-5, rtol=0)


def test_whitening_matches_loop_over_tokens() -> None:
    gen = torch.Generator().manual_seed(1)
    rewards, lengths = torch.rand(3, 4, generator=gen), torch.randint(1, 6, (3, 4), generator=gen)
    tokens = [r for r, n in zip(rewards.flatten().tolist(), lengths.flatten().tolist(), strict=True) for _ in range(n)]
    mean = sum(tokens) / len(tokens)
    std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / (len(tokens) - 1))
    expected = (rewards.double() - mean) / std
    torch.testing.assert_close(reinforce_pp(rewards, lengths=lengths).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["group_zscore", "group_mean", "rloo", "batch_zscore", "reinforce_pp", "opmd", "gpg"])
def test_permutation_within_group(name: str) -> None:
    rewards = torch.rand(3, 5, generator=torch.Generator().manual_seed(2))
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, out_perm = ADVANTAGES[name](rewards), ADVANTAGES[name](rewards[:, perm])
    torch.testing.assert_close(out[:, perm], out_perm)


def test_singletons_and_nan_rewards() -> None:
    assert torch.all(ADVANTAGES["group_zscore"](torch.tensor([[0.7]])) == 0)
    assert torch.all(ADVANTAGES["rloo"](torch.tensor([[0.7]])) == 0)
    rewards = torch.tensor([[1.0, math.nan, 0.0, 1.0]])
    out = ADVANTAGES["group_mean"](rewards)
    close(out, [1 / 3, 0, -2 / 3, 1 / 3], tol=1e-6)  # the NaN is left out of the mean and gets 0
    assert torch.isfinite(ADVANTAGES["group_zscore"](rewards)).all()


def test_unknown_param_values_fail() -> None:
    with pytest.raises(ValueError, match="baseline"):
        ADVANTAGES["opmd"](G1, baseline="median")
    with pytest.raises(ValueError, match="alpha"):
        ADVANTAGES["gpg"](G1, alpha="tokens")


# ---- 8.6 GAE --------------------------------------------------------------------------------------------
R3, V3, M3 = torch.tensor([[0.0, 0, 1]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3)


@pytest.mark.parametrize(("lam", "adv", "ret"), [
    (1.0, [0.5, 0.4, 0.3], [1, 1, 1]),
    (0.95, [0.46575, 0.385, 0.3], [0.96575, 0.985, 1.0]),
    (0.0, [0.1, 0.1, 0.3], [0.6, 0.7, 1.0]),
])
def test_gae_vectors(lam: float, adv: list, ret: list) -> None:
    a, r = gae(R3, V3, M3, gamma=1.0, lam=lam)
    close(a, adv, tol=1e-6)
    close(r, ret, tol=1e-6)


def test_decoupled_gae_vc_ppo() -> None:
    _, returns = gae(R3, V3, M3, 1.0, 1.0)
    adv, _ = gae(R3, V3, M3, 1.0, 0.95)
    close(returns, [1, 1, 1])
    close(adv, [0.46575, 0.385, 0.3])


def test_gae_matches_loop_with_masks_and_per_row_lambda() -> None:
    gen = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    lam, gamma = torch.tensor([0.9, 0.5, 1.0]), 0.97
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i in range(3):
        idx = mask[i].nonzero().squeeze(1).tolist()  # masked positions are skipped, the recursion carried over
        running, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = float(rewards[i, t]) + gamma * next_v - float(values[i, t])
            running = delta + gamma * float(lam[i]) * running
            next_v = float(values[i, t])
            assert abs(float(adv[i, t]) - running) < 1e-5
            assert abs(float(ret[i, t]) - (running + float(values[i, t]))) < 1e-5
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_vapo_adaptive_lambda() -> None:
    close(adaptive_lambda(torch.tensor([20, 100, 1000, 4000]), 0.05), [0.0, 0.8, 0.98, 0.995], tol=1e-6)


# ---- process rewards ------------------------------------------------------------------------------------
def test_process_advantage_is_future_sum_of_group_normalised_steps() -> None:
    # Two completions of one prompt; steps end at tokens 1, 3 (row 0) and 2 (row 1).
    token_rewards = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = process_advantages(token_rewards, mask, group_size=2)
    scores = torch.tensor([1.0, 0.5, 0.2])
    z = (scores - scores.mean()) / (scores.std() + 1e-6)
    close(out[0], [z[0] + z[1], z[0] + z[1], z[1], z[1], 0.0], tol=1e-5)
    close(out[1], [z[2], z[2], z[2], 0.0, 0.0], tol=1e-5)


def test_process_step_mask_keeps_zero_scores() -> None:
    token_rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    step_mask = torch.tensor([[False, True], [False, True]])
    out = process_advantages(token_rewards, torch.ones(2, 2), 2, step_mask=step_mask, ddof=0)
    close(out, [[1, 1], [-1, -1]], tol=1e-5)


def test_masked_whiten_ignores_masked_entries() -> None:
    x = torch.tensor([[1.0, 3.0, 100.0]])
    out = masked_whiten(x, torch.tensor([[1.0, 1.0, 0.0]]), ddof=0)
    close(out, [-1, 1, 0], tol=1e-6)
