"""Presets: the published algorithms as AlgorithmSpec values, each citing its paper and coefficients.

Every preset is data: a function returning a spec, whose docstring says what it changes against GRPO.
Counts that depend on the run (prompts per step, G, the generation budget L) come from the config.
Where the paper and the frameworks disagree (see the spec notes, section 5) the paper wins and the
choice is written down here.
"""

from __future__ import annotations

from collections.abc import Callable

from reinforced.algorithms.spec import (
    AlgorithmSpec,
    ClipConfig,
    CriticConfig,
    DynamicSamplingConfig,
    KLConfig,
    PruneConfig,
)
from reinforced.registry import Registry

PRESETS: Registry[Callable[[], AlgorithmSpec]] = Registry("algorithm preset")


@PRESETS.register("grpo")
def grpo() -> AlgorithmSpec:
    """GRPO, DeepSeekMath (Shao et al., arXiv 2402.03300).

    Group z-score advantage ``(R - mean)/(std + 1e-6)`` (Bessel std), PPO clip eps=0.2 on token ratios,
    sequence-mean-of-token-mean loss, KL k3 in the loss with beta=0.04, one update per rollout.
    """
    return AlgorithmSpec(
        name="grpo", advantage="group_zscore", objective="ppo_clip", aggregation="seq_mean_token_mean",
        kl=KLConfig(estimator="k3", coef=0.04, placement="loss"),
    )


@PRESETS.register("dr_grpo")
def dr_grpo() -> AlgorithmSpec:
    """Dr.GRPO (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    Against GRPO exactly two parts change: advantage ``R - mean`` (no std: no difficulty bias) and the
    constant normaliser ``sum / (N L)`` with L the generation budget (no length bias); and beta=0.
    """
    return AlgorithmSpec(
        name="dr_grpo", advantage="group_mean", objective="ppo_clip", aggregation="seq_sum_constant",
    )


@PRESETS.register("dapo")
def dapo() -> AlgorithmSpec:
    """DAPO (Yu et al., arXiv 2503.14476) with the verl recipe's settings.

    Clip-higher eps_low=0.2 / eps_high=0.28, dual clip c=10 (recipe), global token-mean loss, no KL,
    dynamic sampling on accuracy (at most 10 generation rounds), 16 mini-batches per rollout (512
    responses of 8192). Overlong filtering is off (the recipe's best run used the soft overlong
    punishment, a reward: ``rewards``), switch it on with ``mask_truncated=true``.
    """
    return AlgorithmSpec(
        name="dapo", advantage="group_zscore", objective="ppo_clip", aggregation="token_mean",
        clip=ClipConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=10.0),
        dynamic_sampling=DynamicSamplingConfig(max_rounds=10), num_mini_batches=16,
    )


@PRESETS.register("rloo")
def rloo() -> AlgorithmSpec:
    """RLOO (Ahmadian et al., "Back to Basics", arXiv 2402.14740).

    Leave-one-out baseline, the whole response is one action (token-sum loss, mean over sequences), KL k1
    in the reward with beta=0.05 (TRL's default; the paper index run uses 0.03), folded into the sequence's
    reward ``R - beta sum_t KL_t`` *before* the leave-one-out baseline as in the paper and TRL
    (``kl.reward_form='token'`` is OpenRLHF's form: per-token KL return-to-go after the baseline). PPO
    clip 0.2 keeps extra mini-batches safe; on-policy it equals REINFORCE.
    """
    return AlgorithmSpec(
        name="rloo", advantage="rloo", objective="ppo_clip", aggregation="seq_mean_token_sum",
        kl=KLConfig(estimator="k1", coef=0.05, placement="reward", reward_form="sequence"),
    )


@PRESETS.register("reinforce_pp")
def reinforce_pp() -> AlgorithmSpec:
    """REINFORCE++ (Hu et al., arXiv 2501.03262) as in OpenRLHF (the authors' code).

    No baseline: token reward ``R at the last token - beta k1_t`` (beta=0.01), return-to-go, then
    whitening over all loss tokens of the batch with population variance; PPO clip 0.2, token-mean loss.
    """
    return AlgorithmSpec(
        name="reinforce_pp", advantage="reinforce_pp", advantage_params={"ddof": 0},
        objective="ppo_clip", aggregation="token_mean",
        kl=KLConfig(estimator="k1", coef=0.01, placement="reward"),
    )


@PRESETS.register("reinforce_pp_baseline")
def reinforce_pp_baseline() -> AlgorithmSpec:
    """REINFORCE++-baseline (arXiv 2501.03262; OpenRLHF's RLVR example script).

    Group-mean baseline, then global token whitening (population variance); KL k2 in the loss with
    beta=1e-5; PPO clip 0.2, token-mean loss.
    """
    return AlgorithmSpec(
        name="reinforce_pp_baseline", advantage="batch_zscore", advantage_params={"ddof": 0},
        objective="ppo_clip", aggregation="token_mean",
        kl=KLConfig(estimator="k2", coef=1e-5, placement="loss"),
    )


@PRESETS.register("gspo")
def gspo() -> AlgorithmSpec:
    """GSPO (Zheng et al., Qwen, arXiv 2507.18071).

    Sequence-level ratio ``exp(mean_t log r)`` clipped at eps_low=3e-4 / eps_high=4e-4, each sequence
    weighted equally (seq-mean-token-mean), no KL, the rollout split into 4 mini-batches.
    """
    return AlgorithmSpec(
        name="gspo", advantage="group_zscore", objective="gspo_seq", aggregation="seq_mean_token_mean",
        clip=ClipConfig(eps_low=3e-4, eps_high=4e-4), num_mini_batches=4,
    )


@PRESETS.register("cppo")
def cppo() -> AlgorithmSpec:
    """CPPO (Lin et al., arXiv 2503.22342), math recipe of its repository.

    GRPO advantage on the full group (std + 1e-4), then keep the half of each group with the largest
    |A| (P=0.5) and sample twice as many prompts (dynamic completion allocation); KL k3 in the loss with
    beta=0.04; token-mean loss; 2 passes over each batch (num_iterations=2).
    """
    return AlgorithmSpec(
        name="cppo", advantage="group_zscore", advantage_params={"eps": 1e-4},
        objective="ppo_clip", aggregation="token_mean",
        kl=KLConfig(estimator="k3", coef=0.04, placement="loss"),
        prune=PruneConfig(rate=0.5, allocation=True), num_epochs=2,
    )


@PRESETS.register("opmd")
def opmd() -> AlgorithmSpec:
    """Kimi k1.5 online policy mirror descent (Kimi Team, arXiv 2501.12599, section 2.3.2).

    Mean-reward baseline (the report's choice for tau log Z), squared-error surrogate with tau=1.0 (the
    report gives no value; Trinity-RFT's default), whole-response logprobs (token sums, mean over
    samples), no clip, no reference model. Each iteration i is its own mirror-descent problem against
    the fixed pi_i (the rollout's behaviour log-probs): the optimiser state is reset at its start, then
    4 updates (2 passes x 2 mini-batches; the report gives no count) move pi_theta away from pi_i so the
    tau term regularises every update after the first (with a single update it has zero gradient).
    """
    return AlgorithmSpec(
        name="opmd", advantage="opmd", advantage_params={"baseline": "mean"},
        objective="opmd", objective_params={"tau": 1.0}, aggregation="seq_mean_token_sum",
        reset_optimizer_each_step=True, num_epochs=2, num_mini_batches=2,
    )


@PRESETS.register("gpg")
def gpg() -> AlgorithmSpec:
    """GPG (Chu et al., arXiv 2504.02546), its original code.

    ``A = alpha (R - mean)`` with ``alpha = #groups / #groups with non-zero std``; plain policy gradient
    ``-A log pi`` (no ratio, clip, KL or reference model), seq-mean-token-mean, one update per rollout.
    """
    return AlgorithmSpec(name="gpg", advantage="gpg", objective="pg", aggregation="seq_mean_token_mean")


@PRESETS.register("ppo")
def ppo() -> AlgorithmSpec:
    """PPO with GAE (Schulman et al., arXiv 1707.06347) with TRL's PPOTrainer coefficients (RLHF setting).

    Critic (separate trunk) with gamma=1, lambda=0.95, value clip 0.2, vf_coef 0.1; KL k1 in the reward
    with beta=0.05; advantages whitened over the batch; 4 epochs per rollout; token-mean loss.
    """
    return AlgorithmSpec(
        name="ppo", advantage="gae", objective="ppo_clip", aggregation="token_mean",
        kl=KLConfig(estimator="k1", coef=0.05, placement="reward"), num_epochs=4,
        critic=CriticConfig(gamma=1.0, lam_actor=0.95, lam_critic=0.95, value_clip=0.2, vf_coef=0.1, lr=1e-5),
    )


@PRESETS.register("orz_ppo")
def orz_ppo() -> AlgorithmSpec:
    """Open-Reasoner-Zero PPO (Hu et al., arXiv 2503.24290).

    GAE with lambda=1 and gamma=1 (advantage = Monte-Carlo return minus value), clip 0.2, value clip 0.2,
    no KL of any kind, no entropy bonus; critic lr 5e-6 with 12 critic steps per rollout; one policy step
    per rollout (strictly on-policy); batch-level advantage whitening; per-sequence token mean.
    """
    return AlgorithmSpec(
        name="orz_ppo", advantage="gae", objective="ppo_clip", aggregation="seq_mean_token_mean",
        critic=CriticConfig(gamma=1.0, lam_actor=1.0, lam_critic=1.0, value_clip=0.2, lr=5e-6, num_mini_batches=12),
    )


@PRESETS.register("vc_ppo")
def vc_ppo() -> AlgorithmSpec:
    """VC-PPO, Value-Calibrated PPO (Yuan et al., arXiv 2503.01491).

    Value pretraining on rollouts of the frozen initial policy until the loss plateaus (at most 100
    steps, patience 3, 1% tolerance) before any policy update; decoupled GAE with lambda_critic=1 and
    lambda_actor=0.95, gamma=1; clip 0.2; no KL; token-mean loss (the paper's companion DAPO/VAPO setting).
    """
    return AlgorithmSpec(
        name="vc_ppo", advantage="gae", objective="ppo_clip", aggregation="token_mean",
        critic=CriticConfig(gamma=1.0, lam_actor=0.95, lam_critic=1.0, value_clip=0.2, pretrain_steps=100),
    )


@PRESETS.register("vapo")
def vapo() -> AlgorithmSpec:
    """VAPO (Yue et al., arXiv 2504.05118): VC-PPO plus length-adaptive lambda and clip-higher.

    Actor lambda ``1 - 1/(0.05 l)``, critic lambda 1, value pretraining, clip 0.2/0.28, token-mean loss,
    critic lr 2e-6. (The positive-example NLL term of the paper is not part of this zoo.)
    """
    return AlgorithmSpec(
        name="vapo", advantage="gae", objective="ppo_clip", aggregation="token_mean",
        clip=ClipConfig(eps_low=0.2, eps_high=0.28),
        critic=CriticConfig(lam_alpha=0.05, lam_critic=1.0, lr=2e-6, pretrain_steps=100),
    )
