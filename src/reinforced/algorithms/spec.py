"""AlgorithmSpec: one policy-optimisation algorithm as a composition of choices, one per axis.

    algorithm = advantage estimator (+ process rewards | critic with GAE)
              x objective (+ ClipConfig) x loss aggregation x KL (estimator, coef, placement)
              x filters (dynamic sampling, truncation mask, CPPO pruning) x entropy bonus x update counts

Presets (``presets.py``) are values of this class; a config overrides single axes with dotted keys
(``{"clip.eps_high": 0.28, "kl.coef": 0.04}``). ``validate()`` is the one place where clashing choices
are rejected, with a message that names the keys and a way out. The survey this zoo follows is
"Reinforced MLLM" (arXiv 2504.21277); the formulas live in the modules of each axis.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reinforced.registry import UnknownNameError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ClipConfig(_Section):
    eps_low: float = Field(0.2, ge=0, lt=1)
    """Lower clip: the ratio is clipped at ``1 - eps_low``."""
    eps_high: float = Field(0.2, gt=0)
    """Upper clip ``1 + eps_high``; 0.28 with eps_low 0.2 is DAPO's clip-higher."""
    dual_clip_c: float | None = Field(None, gt=1)
    """Dual clip: for negative advantages the loss is at most ``-c A`` (verl 3.0, DAPO recipe 10.0)."""
    ratio_cap: float | None = Field(None, gt=1)
    """Cap the raw ratio before the PPO min (INTELLECT-2's two-sided clip, delta=4); None: off."""


class KLConfig(_Section):
    estimator: str = "k3"
    """KL estimator (k1, k2, k3)."""
    coef: float = Field(0.0, ge=0)
    """beta; 0 disables the term (and the reference model)."""
    placement: Literal["none", "loss", "reward"] = "none"
    """``loss``: added to the policy loss; ``reward``: subtracted from token rewards; ``none``: no KL."""
    reward_form: Literal["token", "sequence"] = "token"
    """With placement ``reward``: ``token`` subtracts ``beta sum_{s >= t} KL_s`` from each token's advantage
    after the baseline (OpenRLHF); ``sequence`` subtracts ``beta sum_t KL_t`` from the outcome reward before
    the estimator, so the baseline sees it (RLOO paper, TRL). Outcome estimators only."""
    clamp: float | None = Field(10.0, gt=0)
    """Clamp each token's KL value to ``+-clamp`` (verl and OpenRLHF: 10); None: no clamp."""


class DynamicSamplingConfig(_Section):
    max_rounds: int = Field(10, ge=0)
    """Generation rounds per step at most (0: no cap, DAPO Algorithm 1's sample-until-full); verl recipe: 10."""
    on_cap: Literal["error", "partial"] = "error"
    """At the cap with the batch short: ``error`` stops the run (verl's recipe); ``partial`` trains on the
    groups kept and logs ``filter/missing_groups``."""
    metric: Literal["accuracy"] = "accuracy"
    """Groups are judged on verifier accuracy, never on the shaped score."""


class PruneConfig(_Section):
    rate: float = Field(0.5, gt=0, lt=1)
    """CPPO pruning rate P: keep ``round(G (1 - P))`` completions per prompt, those with the largest |A|."""
    allocation: bool = True
    """Dynamic completion allocation: sample ``1/(1-P)`` times more prompts so the batch stays full."""


class CriticConfig(_Section):
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount."""
    lam_actor: float = Field(1.0, ge=0, le=1)
    """GAE lambda for the policy advantages."""
    lam_critic: float = Field(1.0, ge=0, le=1)
    """GAE lambda for the value targets (decoupled GAE, VC-PPO: 1.0)."""
    lam_alpha: float | None = Field(None, gt=0)
    """VAPO length-adaptive actor lambda ``1 - 1/(alpha l)`` (replaces lam_actor); None: off."""
    value_clip: float | None = Field(0.2, gt=0)
    """Clip the new value to ``old +- value_clip`` in the loss; None: unclipped."""
    vf_coef: float = Field(0.5, gt=0)
    """Weight of the value loss added to the policy loss with a shared trunk (PPO's c1); a separate critic
    minimises its own loss unweighted, so there it has no effect."""
    lr: float = Field(1e-5, gt=0)
    """Critic learning rate (the value head's with a shared trunk); it follows the policy's schedule
    (warm-up, decay) on its own optimiser steps."""
    shared_trunk: bool = False
    """Value head on the policy's trunk instead of a separate backbone."""
    num_mini_batches: int = Field(1, ge=1)
    """Critic optimiser steps per rollout batch."""
    pretrain_steps: int = Field(0, ge=0)
    """VC-PPO value pretraining: at most this many critic-only steps on rollouts of the frozen initial
    policy, stopping early when the loss plateaus (0: off)."""
    pretrain_tolerance: float = Field(0.01, ge=0)
    """Relative improvement below which the pretraining loss counts as flat."""
    pretrain_patience: int = Field(3, ge=1)
    """Flat steps in a row that end pretraining."""
    whiten_advantages: bool = True
    """Whiten the actor advantages over the batch's loss tokens."""
    whiten_ddof: int = Field(1, ge=0, le=1)
    """1: Bessel-corrected variance (verl, TRL); 0: population (OpenRLHF)."""


SEQUENCE_RATIO_OBJECTIVES = ("gspo_seq",)
TOKEN_SUM_AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_sum_constant")
SECTIONS: dict[str, type[_Section]] = {
    "clip": ClipConfig, "kl": KLConfig, "dynamic_sampling": DynamicSamplingConfig,
    "prune": PruneConfig, "critic": CriticConfig,
}
PARAM_DICTS = ("advantage_params", "objective_params")


class AlgorithmSpec(_Section):
    name: str = "custom"
    """The preset this spec came from."""
    advantage: str = "group_zscore"
    """Outcome advantage estimator (ADVANTAGES), or ``gae`` with a critic."""
    advantage_params: dict[str, Any] = Field(default_factory=dict)
    """Keyword parameters of the estimator (eps, ddof, ...)."""
    process_mode: Literal["outcome_plus_process", "process", "outcome"] = "outcome_plus_process"
    """How step rewards (terms that score steps) enter: ``outcome_plus_process`` adds ``process_weight``
    times their advantage to the outcome one, and their scalar scores stay out of R (counted once);
    ``process`` is DeepSeekMath's process supervision (step rewards only, no outcome term); ``outcome``
    ignores the steps and counts those terms' scores in R like any other."""
    process_weight: float = Field(1.0, ge=0)
    """Weight of the process-reward advantage (or, with a critic, of the step rewards)."""
    objective: str = "ppo_clip"
    """Policy objective (OBJECTIVES)."""
    objective_params: dict[str, Any] = Field(default_factory=dict)
    """Keyword parameters of the objective (opmd: tau)."""
    clip: ClipConfig = ClipConfig()
    """Ratio clipping."""
    aggregation: str = "seq_mean_token_mean"
    """Loss aggregation (AGGREGATORS)."""
    loss_constant: int | None = Field(None, ge=1)
    """L of seq_sum_constant; None: the generation budget (rollout.max_new_tokens)."""
    kl: KLConfig = KLConfig()
    """KL to the reference model."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus c_H: ``loss -= c_H * aggregate(entropy)``."""
    num_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch."""
    num_mini_batches: int = Field(1, ge=1)
    """Optimiser steps per pass (ratios are taken against the behaviour logprobs)."""
    reset_optimizer_each_step: bool = False
    """Fresh optimiser state at every RL step (Kimi k1.5 OPMD)."""
    mask_truncated: bool = False
    """Overlong filtering: truncated completions leave the loss (and its normaliser)."""
    dynamic_sampling: DynamicSamplingConfig | None = None
    """DAPO dynamic sampling (None: off)."""
    prune: PruneConfig | None = None
    """CPPO completion pruning (None: off)."""
    critic: CriticConfig | None = None
    """Value model settings (value-based methods only)."""
    tis_cap: float | None = Field(None, gt=0)
    """Truncated importance sampling cap C (None: off): each token's objective is weighted by
    ``min(pi_old / pi_rollout, C)``, the trainer's probability of the sampled token over the rollout engine's
    (vLLM's kernels and precision differ from the trainer's). Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL" (C = 2); verl ``tis_imp_ratio_cap``."""

    @property
    def needs_reference(self) -> bool:
        """A reference model is built only when a KL term uses it."""
        return self.kl.placement != "none" and self.kl.coef > 0

    @property
    def prompts_per_step_factor(self) -> float:
        """CPPO allocation: prompts are sampled ``1/(1-P)`` times as many; 1.0 otherwise."""
        if self.prune is not None and self.prune.allocation:
            return 1.0 / (1.0 - self.prune.rate)
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def describe(self) -> list[tuple[str, str]]:
        """One (axis, value) line per axis, for ``reinforced explain`` and the run log."""
        def fmt(d: Mapping[str, Any]) -> str:
            return ", ".join(f"{k}={v}" for k, v in d.items())

        c = self.clip
        kl = "off" if not self.needs_reference else (
            f"{self.kl.estimator} coef={self.kl.coef} in {self.kl.placement}"
            + (f" ({self.kl.reward_form})" if self.kl.placement == "reward" else "") + f" clamp={self.kl.clamp}")
        lines = [
            ("preset", self.name),
            ("advantage", f"{self.advantage}({fmt(self.advantage_params)})"),
            ("objective", f"{self.objective}({fmt(self.objective_params)})"),
            ("clip", f"eps_low={c.eps_low} eps_high={c.eps_high} dual_clip_c={c.dual_clip_c} ratio_cap={c.ratio_cap}"),
            ("aggregation", self.aggregation + (f" (L={self.loss_constant})" if self.loss_constant else "")),
            ("kl", kl),
            ("reference model", "built" if self.needs_reference else "not built"),
            ("entropy_coef", str(self.entropy_coef)),
            ("updates", f"num_epochs={self.num_epochs} num_mini_batches={self.num_mini_batches} "
                        f"reset_optimizer_each_step={self.reset_optimizer_each_step}"),
            ("dynamic_sampling", "off" if self.dynamic_sampling is None else fmt(self.dynamic_sampling.model_dump())),
            ("mask_truncated", str(self.mask_truncated)),
            ("prune", "off" if self.prune is None else fmt(self.prune.model_dump())),
            ("process", f"{self.process_mode} weight={self.process_weight}"),
            ("critic", "none" if self.critic is None else fmt(self.critic.model_dump())),
            ("tis_cap", "off" if self.tis_cap is None else str(self.tis_cap)),
        ]
        return lines

    def validate(self) -> AlgorithmSpec:  # type: ignore[override]  # pydantic's classmethod is deprecated
        """Reject unknown names and clashing choices; returns self."""
        _check_names(self)
        _check_params(self)
        _check_clashes(self)
        return self


def _lookup(registry: Any, name: str, key: str) -> Callable[..., Any]:
    try:
        return registry[name]
    except UnknownNameError as err:
        raise ValueError(f"{key}: {err}") from None


def _check_names(spec: AlgorithmSpec) -> None:
    from reinforced.algorithms.advantages import ADVANTAGES
    from reinforced.algorithms.aggregation import AGGREGATORS
    from reinforced.algorithms.kl import KL_ESTIMATORS
    from reinforced.algorithms.objectives import OBJECTIVES

    if spec.advantage != "gae":
        _lookup(ADVANTAGES, spec.advantage, "advantage")
    _lookup(OBJECTIVES, spec.objective, "objective")
    _lookup(AGGREGATORS, spec.aggregation, "aggregation")
    _lookup(KL_ESTIMATORS, spec.kl.estimator, "kl.estimator")


def _dry_run(key: str, fn: Callable[..., Any], params: Mapping[str, Any], call: Callable[..., Any]) -> None:
    """Check parameter names against the signature, then types/values by calling on a tiny input."""
    sig = inspect.signature(fn)
    fixed = [n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty]
    valid = [n for n in sig.parameters if n not in fixed and n != "lengths"]
    for name in params:
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            extra = f" did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"{key}.{name}: unknown parameter;{extra} valid: {', '.join(valid) or '(none)'}")
    try:
        call(fn, **params)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{key}: bad value in {dict(params)!r}: {err}") from None


def _check_params(spec: AlgorithmSpec) -> None:
    from reinforced.algorithms.advantages import ADVANTAGES
    from reinforced.algorithms.objectives import OBJECTIVES

    r = torch.tensor([[1.0, 0.0]])
    if spec.advantage != "gae":
        _dry_run("advantage_params", ADVANTAGES[spec.advantage], spec.advantage_params, lambda f, **p: f(r, **p))
    elif spec.advantage_params:
        raise ValueError("advantage_params: 'gae' takes its parameters from the critic section (critic.lam_actor, ...)")
    z = torch.zeros(1, 2)
    _dry_run("objective_params", OBJECTIVES[spec.objective], spec.objective_params,
             lambda f, **p: f(z, z, z, torch.ones(1, 2), spec.clip, **p))


def _check_clashes(spec: AlgorithmSpec) -> None:  # noqa: C901  # a flat list of independent rules
    if (spec.advantage == "gae") != (spec.critic is not None):
        if spec.critic is None:
            raise ValueError("advantage 'gae' needs a critic: set 'critic' (e.g. critic={}) or pick an outcome estimator")
        raise ValueError(f"critic is set but advantage {spec.advantage!r} ignores values: use advantage 'gae' or critic=null")
    if spec.objective in SEQUENCE_RATIO_OBJECTIVES and spec.aggregation in TOKEN_SUM_AGGREGATIONS:
        raise ValueError(
            f"objective {spec.objective!r} (a sequence-level ratio) with aggregation {spec.aggregation!r} re-weights "
            "sequences by their length; use aggregation 'seq_mean_token_mean'"
        )
    if spec.objective == "opmd" and spec.aggregation not in ("seq_mean_token_sum", "seq_sum_constant"):
        raise ValueError(
            f"objective 'opmd' is a loss on whole-response logprobs; aggregation {spec.aggregation!r} would divide "
            "it by token counts: use 'seq_mean_token_sum'"
        )
    if spec.needs_reference and spec.kl.reward_form == "sequence" and spec.critic is not None:
        raise ValueError("kl.reward_form='sequence' folds the KL into the outcome reward of an outcome estimator; "
                         "with a critic (advantage 'gae') the KL is a per-token reward: use kl.reward_form='token'")
    if spec.objective == "opmd" and spec.num_epochs * spec.num_mini_batches == 1 and spec.objective_params.get("tau", 1.0) > 0:
        raise ValueError(
            "objective 'opmd' with one update per rollout: pi_theta == pi_old at that update, so the tau term has "
            "zero gradient (Kimi k1.5 optimises several steps against the fixed pi_i); set num_mini_batches or "
            "num_epochs > 1, or objective_params.tau=0"
        )
    if spec.kl.coef > 0 and spec.kl.placement == "none":
        raise ValueError(f"kl.coef={spec.kl.coef} but kl.placement='none': set kl.placement to 'loss' or 'reward'")
    if spec.needs_reference and spec.kl.placement == "loss" and spec.kl.estimator == "k1":
        raise ValueError("kl.estimator 'k1' in the loss has zero expected gradient; use k2/k3 in the loss or put k1 in the reward")
    if spec.objective == "pg" and (spec.num_epochs > 1 or spec.num_mini_batches > 1):
        raise ValueError(
            f"objective 'pg' has no importance ratio, so num_epochs={spec.num_epochs} / num_mini_batches="
            f"{spec.num_mini_batches} would reuse stale samples uncorrected; use 'ppo_clip' or a single update"
        )
    if spec.prune is not None and spec.critic is not None:
        raise ValueError("prune (CPPO) ranks completions by outcome advantage; it does not apply with a critic")
    if spec.critic is not None and spec.critic.lam_alpha is not None and spec.critic.lam_actor != 1.0:
        raise ValueError("critic.lam_alpha (length-adaptive lambda) replaces critic.lam_actor; set only one of them")


# ----------------------------------------------------------------------------------------------------------
# Dotted overrides


def valid_override_keys(spec: AlgorithmSpec) -> list[str]:
    """Every dotted key an override may name (dict-valued params accept any sub-key)."""
    keys: list[str] = []
    for name in AlgorithmSpec.model_fields:
        keys.append(name)
        if name in SECTIONS:
            keys += [f"{name}.{sub}" for sub in SECTIONS[name].model_fields]
        if name in PARAM_DICTS:
            keys.append(f"{name}.<name>")
    return keys


def _unknown(key: str, spec: AlgorithmSpec) -> ValueError:
    valid = valid_override_keys(spec)
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    extra = f" did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"unknown algorithm key {key!r};{extra} valid keys: {', '.join(valid)}")


def apply_overrides(spec: AlgorithmSpec, overrides: Mapping[str, Any]) -> AlgorithmSpec:
    """A new spec with dotted ``overrides`` applied, type-checked (not yet validated for clashes).

    A sub-key of a section that is off (``dynamic_sampling.max_rounds`` on GRPO) switches the section on
    with its defaults; a whole section can be given as a mapping (merged) or null (off).
    """
    tree = spec.model_dump()
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in AlgorithmSpec.model_fields:
            raise _unknown(key, spec)
        if not rest:
            if head in SECTIONS and isinstance(value, Mapping) and tree[head] is not None:
                tree[head] = {**tree[head], **value}
            else:
                tree[head] = value
        elif head in PARAM_DICTS and "." not in rest:
            tree[head] = {**tree[head], rest: value}
        elif head in SECTIONS and rest in SECTIONS[head].model_fields:
            tree[head] = {**(tree[head] or {}), rest: value}
        else:
            raise _unknown(key, spec)
    try:
        return AlgorithmSpec.model_validate(tree)
    except ValidationError as err:
        msgs = [
            f"bad value for algorithm key {'.'.join(str(p) for p in e['loc'])!r}: {e.get('input')!r}: {e['msg']}"
            for e in err.errors()
        ]
        raise ValueError("\n".join(msgs)) from None


def resolve_spec(preset: str, overrides: Mapping[str, Any] | None = None) -> AlgorithmSpec:
    """The preset ``preset`` with dotted ``overrides`` applied, validated.

    >>> resolve_spec("grpo", {"clip.eps_high": 0.28}).clip.eps_high
    0.28
    >>> resolve_spec("grpo", {"clip.eps_hi": 0.28})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown algorithm key 'clip.eps_hi'; did you mean 'clip.eps_high'? valid keys: ...
    """
    from reinforced.algorithms.presets import PRESETS

    base = _lookup(PRESETS, preset, "algorithm.preset")()
    return apply_overrides(base, overrides or {}).validate()
