"""Every algorithm preset runs 2 fit() steps on a tiny Qwen2 through the same trainer."""

import json
import math

import pytest

from reinforced.algorithms import PRESETS
from reinforced.config import load_config
from reinforced.training.loop import fit

# Random tiny models never answer right and rarely stop; stop strings make lengths vary and the DAPO
# overlong penalty (marked as the accuracy term here) turns those lengths into informative groups.
BASE = [
    "model.name_or_path=tiny-qwen2",
    "data.train=[{task: arithmetic}]",
    "data.template=plain",  # byte-level tiny tokenizer: short prompts keep the test fast
    "rollout.group_size=4",
    "rollout.max_new_tokens=8",
    "rollout.stop=[a, e, o, '1', '2', '3', '4', '5', '7', ' ']",
    "rewards.sets={arithmetic: [{name: overlong, accuracy: true, params: {max_tokens: 8, cache_tokens: 8}}]}",
    "training.num_prompts=2",
    "training.micro_batch_size=4",
    "training.max_steps=2",
    "training.lr=0.01",
    "training.tensorboard=false",
    "training.samples_per_step=0",
]
# Presets whose paper batch is larger than this test's 8 samples, or whose warm-up is long.
SHRINK = {
    "dapo": ["algorithm.num_mini_batches=2"],
    "ppo": ["algorithm.num_epochs=2"],
    "vc_ppo": ["algorithm.critic.pretrain_steps=2"],
    "vapo": ["algorithm.critic.pretrain_steps=2"],
}


@pytest.mark.parametrize("preset", PRESETS.names())
def test_preset_runs_two_steps(tmp_path, preset):
    cfg = load_config(None, [*BASE, f"algorithm.preset={preset}", f"run.output_dir={tmp_path}",
                             f"run.name={preset}", *SHRINK.get(preset, [])])
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    spec = PRESETS[preset]()
    for r in train:
        assert math.isfinite(r["train/loss"]) and math.isfinite(r["train/grad_norm"])
        o = cfg.algorithm.overrides
        expected = o.get("num_mini_batches", spec.num_mini_batches) * o.get("num_epochs", spec.num_epochs)
        assert r["train/optimizer_steps"] == expected
        if spec.critic is not None:
            assert math.isfinite(r["critic/loss"])
    if spec.critic is not None and spec.critic.pretrain_steps:
        assert rows[0]["critic/pretrain_steps"] >= 1


def test_critic_on_the_policy_trunk(tmp_path):
    """critic.shared_trunk: one forward feeds the policy and value losses; the head is checkpointed."""
    cfg = load_config(None, [*BASE, "algorithm.preset=orz_ppo", "algorithm.critic.shared_trunk=true",
                             f"run.output_dir={tmp_path}", "run.name=shared", "training.checkpoint_every=1"])
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert all(math.isfinite(r["train/value/value_loss"]) for r in train)
    assert "critic/loss" not in train[0]  # no separate critic optimiser steps
    import torch

    head_1 = torch.load(result.run_dir / "checkpoints" / "step-1" / "critic.pt")
    head_2 = torch.load(result.run_dir / "checkpoints" / "step-2" / "critic.pt")
    assert not torch.equal(head_1["linear.weight"], head_2["linear.weight"])


def test_value_pretraining_needs_a_separate_critic(tmp_path):
    cfg = load_config(None, [*BASE, "algorithm.preset=vc_ppo", "algorithm.critic.shared_trunk=true",
                             f"run.output_dir={tmp_path}", "run.name=clash"])
    with pytest.raises(ValueError, match="needs a separate critic"):
        fit(cfg, show_progress=False)


def test_shared_trunk_critic_on_a_vision_language_model(tmp_path):
    cfg = load_config(None, [
        "model.name_or_path=reinforced-tiny-vlm", "data.train=[{task: count_shapes}]", "data.template=plain",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "training.num_prompts=2", "training.max_steps=2",
        "training.tensorboard=false", "algorithm.preset=orz_ppo", "algorithm.critic.shared_trunk=true",
        f"run.output_dir={tmp_path}", "run.name=vlm"])
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [math.isfinite(r["train/value/value_loss"]) for r in rows if "train/loss" in r] == [True, True]
