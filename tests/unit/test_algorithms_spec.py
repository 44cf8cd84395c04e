"""AlgorithmSpec, presets and dotted overrides: resolution, type checks, clash rules, description."""

from __future__ import annotations

import json

import pytest

from reinforced.algorithms import PRESETS, AlgorithmSpec, resolve_spec

EXPECTED_PRESETS = {
    "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gspo", "cppo", "opmd",
    "gpg", "ppo", "orz_ppo", "vc_ppo",
}


def test_all_presets_resolve_and_cite_a_paper() -> None:
    assert EXPECTED_PRESETS <= set(PRESETS.names())
    for name in PRESETS:
        spec = resolve_spec(name, {})
        assert spec.name == name
        assert "arXiv" in (PRESETS[name].__doc__ or "")


def test_grpo_preset_coefficients() -> None:
    spec = resolve_spec("grpo", {})
    assert (spec.advantage, spec.objective, spec.aggregation) == ("group_zscore", "ppo_clip", "seq_mean_token_mean")
    assert (spec.kl.estimator, spec.kl.coef, spec.kl.placement) == ("k3", 0.04, "loss")
    assert spec.needs_reference and spec.prompts_per_step_factor == 1.0
    assert spec.critic is None and spec.dynamic_sampling is None and spec.prune is None


def test_preset_differences_against_grpo() -> None:
    dr = resolve_spec("dr_grpo")
    assert (dr.advantage, dr.aggregation, dr.needs_reference) == ("group_mean", "seq_sum_constant", False)
    dapo = resolve_spec("dapo")
    assert (dapo.clip.eps_low, dapo.clip.eps_high, dapo.aggregation) == (0.2, 0.28, "token_mean")
    assert dapo.dynamic_sampling is not None and dapo.dynamic_sampling.max_rounds == 10
    cppo = resolve_spec("cppo")
    assert cppo.prompts_per_step_factor == 2.0
    orz = resolve_spec("orz_ppo")
    assert orz.critic is not None and (orz.critic.gamma, orz.critic.lam_actor, orz.critic.lam_critic) == (1, 1, 1)
    assert not orz.needs_reference
    vc = resolve_spec("vc_ppo")
    assert vc.critic is not None and (vc.critic.lam_actor, vc.critic.lam_critic) == (0.95, 1.0)
    assert vc.critic.pretrain_steps > 0
    assert resolve_spec("opmd").reset_optimizer_each_step
    assert not resolve_spec("gpg").needs_reference


def test_overrides_apply_and_type_check() -> None:
    spec = resolve_spec("grpo", {"clip.eps_high": 0.28, "kl.coef": 0.001, "aggregation": "token_mean",
                                 "advantage_params.eps": 1e-4})
    assert spec.clip.eps_high == 0.28 and spec.kl.coef == 0.001 and spec.aggregation == "token_mean"
    assert spec.advantage_params == {"eps": 1e-4}
    with pytest.raises(ValueError, match=r"clip.eps_high.*'abc'"):
        resolve_spec("grpo", {"clip.eps_high": "abc"})
    with pytest.raises(ValueError, match="num_epochs"):
        resolve_spec("grpo", {"num_epochs": 0})


def test_unknown_keys_suggest() -> None:
    with pytest.raises(ValueError, match="did you mean 'clip.eps_high'"):
        resolve_spec("grpo", {"clip.eps_hi": 0.28})
    with pytest.raises(ValueError, match="did you mean 'aggregation'"):
        resolve_spec("grpo", {"agregation": "token_mean"})
    with pytest.raises(ValueError, match="did you mean 'eps'"):
        resolve_spec("grpo", {"advantage_params.epss": 1e-4})
    with pytest.raises(ValueError, match="did you mean 'token_mean'"):
        resolve_spec("grpo", {"aggregation": "token_meen"})
    with pytest.raises(ValueError, match="did you mean 'grpo'"):
        resolve_spec("grpoo", {})
    with pytest.raises(ValueError, match="advantage_params.*ddof"):
        resolve_spec("grpo", {"advantage_params.ddof": "two"})


def test_section_subkey_switches_section_on_and_null_switches_off() -> None:
    spec = resolve_spec("grpo", {"dynamic_sampling.max_rounds": 5})
    assert spec.dynamic_sampling is not None and spec.dynamic_sampling.max_rounds == 5
    assert resolve_spec("dapo", {"dynamic_sampling": None}).dynamic_sampling is None
    assert resolve_spec("dapo", {"clip": {"eps_high": 0.3}}).clip.eps_low == 0.2  # merged, not replaced


@pytest.mark.parametrize(("preset", "overrides", "match"), [
    ("gspo", {"aggregation": "token_mean"}, "sequence-level ratio"),
    ("opmd", {"aggregation": "token_mean"}, "whole-response"),
    ("dapo", {"kl.coef": 0.04}, "kl.placement"),
    ("grpo", {"kl.estimator": "k1"}, "zero expected gradient"),
    ("gpg", {"num_epochs": 2}, "stale"),
    ("grpo", {"advantage": "gae"}, "needs a critic"),
    ("ppo", {"advantage": "group_zscore"}, "ignores values"),
    ("cppo", {"advantage": "gae", "critic": {}, "advantage_params": {}}, "CPPO"),
    ("vc_ppo", {"critic.lam_alpha": 0.05}, "lam_alpha"),
])
def test_clashes_are_rejected(preset: str, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_spec(preset, overrides)


def test_describe_and_to_dict_round_trip() -> None:
    spec = resolve_spec("dapo", {"kl.coef": 0.01, "kl.placement": "loss"})
    lines = spec.describe()
    axes = [axis for axis, _ in lines]
    assert len(axes) == len(set(axes)) and {"advantage", "objective", "clip", "aggregation", "kl"} <= set(axes)
    assert dict(lines)["kl"] == "k3 coef=0.01 in loss clamp=10.0"
    assert all(isinstance(v, str) and "\n" not in v for _, v in lines)
    data = json.loads(json.dumps(spec.to_dict()))
    assert AlgorithmSpec.model_validate(data) == spec
