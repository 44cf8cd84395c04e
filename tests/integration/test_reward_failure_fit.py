"""End to end: a reward that raises on some samples of a tiny fit run. Each failed sample gets reward NaN,
leaves the loss mask with advantage 0, and the other samples of its group get the z-score of the valid
ones (rewards/compose.py policy; algorithms/advantages.py NaN path). The run counts the failures."""

from __future__ import annotations

import json
import math
import zlib

import torch

from reinforced.config import load_config
from reinforced.rewards import register_reward
from reinforced.training import loop
from reinforced.types import Prompt, RewardResult


@register_reward("_test_flaky")
def _flaky(completion: str, prompt: Prompt) -> RewardResult:
    """r = |y| mod 2, raising on a third of the texts (by checksum; test only)"""
    if zlib.crc32(completion.encode()) % 3 == 0:
        raise RuntimeError("verifier crashed")
    return RewardResult(score=float(len(completion) % 2))


def expected_zscore(rewards: list[float], eps: float) -> list[float]:
    ok = [r for r in rewards if math.isfinite(r)]
    if len(ok) < 2:
        return [0.0] * len(rewards)
    mean = sum(ok) / len(ok)
    std = math.sqrt(sum((r - mean) ** 2 for r in ok) / (len(ok) - 1))
    return [(r - mean) / (std + eps) if math.isfinite(r) else 0.0 for r in rewards]


def test_failed_samples_get_zero_advantage_and_leave_group_stats(tmp_path, monkeypatch):
    seen = []
    prepare = loop.prepare

    def spy(run, groups):
        batch, stats, notes = prepare(run, groups)
        seen.append(([list(g.rewards) for g in groups], batch, run.spec.advantage_params.get("eps", 1e-6)))
        return batch, stats, notes

    monkeypatch.setattr(loop, "prepare", spy)
    cfg = load_config(None, [
        "data.train=[{task: arithmetic}]", "data.template=plain", "model.name_or_path=tiny-qwen2",
        "rollout.group_size=4", "rollout.max_new_tokens=6", "training.num_prompts=3", "training.max_steps=2",
        "training.micro_batch_size=4", "training.tensorboard=false", "rewards.max_error_frac=0.9", "rewards.timeout_s=60",
        "rewards.sets={arithmetic: [{name: _test_flaky, accuracy: true}]}",
        f"run.output_dir={tmp_path}", "run.name=flaky",
    ])
    result = loop.fit(cfg, show_progress=False)
    informative = 0
    for rewards, batch, eps in seen:
        assert batch.advantages.shape[0] == 4 * len(rewards)  # no pruning: rows are group-major
        for gi, group_rewards in enumerate(rewards):
            want = expected_zscore(group_rewards, eps)
            for j, r in enumerate(group_rewards):
                row, mask = gi * 4 + j, batch.completion_mask[gi * 4 + j]
                if not math.isfinite(r):
                    assert not mask.any() and (batch.advantages[row] == 0).all()
                else:
                    torch.testing.assert_close(batch.advantages[row][mask],
                                               torch.full((int(mask.sum()),), want[j]), atol=1e-4, rtol=1e-4)
            informative += int(any(math.isnan(r) for r in group_rewards) and any(abs(w) > 0 for w in want))
    assert informative, "the seed should give a group with a failure and a non-zero z-score among the rest"
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    errors = [r["reward/errors"] for r in rows if "reward/errors" in r]
    assert errors and sum(errors) > 0
    for r in rows:
        if "train/loss" in r:
            assert r["train/loss"] is not None and math.isfinite(r["train/loss"])


