"""A 2-step fit() with rollout.engine=vllm: the loop syncs weights, logs the logprob gap, and TIS runs."""

import json
import math

import pytest

from reinforced.config import load_config
from reinforced.training.loop import fit

pytestmark = pytest.mark.vllm


def test_two_step_fit_with_vllm_logs_the_gap(model_dirs, tmp_path):
    cfg = load_config(None, [
        f"model.name_or_path={model_dirs['qwen2']}", "data.train=[{task: arithmetic}]", "data.template=plain",
        "eval.sets=[{task: arithmetic, limit: 4}]", "eval.max_prompts=4", "rollout.group_size=4",
        "rollout.max_new_tokens=12", "training.num_prompts=2", "training.max_steps=2", "training.lr=0.01",
        "training.tensorboard=false", "rollout.engine=vllm", "rollout.vllm={enforce_eager: true}",
        "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
        "algorithm.overrides={tis_cap: 2.0, kl.coef: 0.0}", f"run.output_dir={tmp_path}", "run.name=v",
    ])
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["train/loss"])
        # fp32 vLLM vs the fp32 trainer: a small but measured gap; TIS weights stay near 1
        assert 0 <= r["rollout/logprob_diff_mean"] <= r["rollout/logprob_diff_max"] < 1e-3, r
        assert r["train/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
