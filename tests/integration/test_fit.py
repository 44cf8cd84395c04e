"""fit() end to end on tiny random models of real architectures: parameters move, metrics are finite,
resume equals an uninterrupted run, and the run directory holds what the README promises."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from reinforced.config import load_config
from reinforced.training.loop import fit

BASE = [
    "data.train=[{task: arithmetic}]",
    "data.template=plain",
    "eval.sets=[{task: arithmetic, limit: 4}]",
    "eval.max_prompts=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "training.num_prompts=2",
    "training.micro_batch_size=3",
    "training.lr=0.01",
    "training.tensorboard=false",
    # A random tiny model never answers right; a length-shaped term gives groups reward variance (gradient).
    "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
]


def config(tmp_path, name, *extra):
    return load_config(None, [*BASE, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def weights(run_dir, step):
    files = sorted((run_dir / "checkpoints" / f"step-{step}" / "model").glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-llama"])
def test_three_steps_change_every_parameter(tmp_path, model):
    cfg = config(tmp_path, model, f"model.name_or_path={model}", "training.max_steps=3",
                 "algorithm.kl.coef=0.04")
    from reinforced.models import load_policy

    initial = {k: v.clone() for k, v in load_policy(cfg.model).model.state_dict().items()}
    result = fit(cfg, show_progress=False)
    final = weights(result.run_dir, 3)
    unchanged = [k for k, v in final.items() if k in initial and torch.equal(v, initial[k])]
    assert not unchanged, f"parameters that did not move: {unchanged}"
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        for key in ("train/loss", "train/grad_norm", "reward/mean", "train/kl_ref", "train/entropy"):
            assert key in r and r[key] is not None and math.isfinite(r[key]), (key, r)
    assert (result.run_dir / "config.yaml").exists()
    assert list((result.run_dir / "samples").glob("step-*.jsonl"))
    assert (result.run_dir / "plots" / "reward.png").exists()
    assert "eval/arithmetic/accuracy" in result.before and "eval/arithmetic/accuracy" in result.after


def test_resume_after_step_2_equals_uninterrupted_run(tmp_path):
    common = ["model.name_or_path=tiny-qwen2", "training.checkpoint_every=2", "training.keep_checkpoints=5"]
    straight = fit(config(tmp_path, "straight", *common, "training.max_steps=4"), show_progress=False)
    first = fit(config(tmp_path, "resumed", *common, "training.max_steps=2"), show_progress=False)
    resumed = fit(config(tmp_path, "resumed", *common, "training.max_steps=4"), resume=True, show_progress=False)
    assert resumed.run_dir == first.run_dir
    a, b = weights(straight.run_dir, 4), weights(resumed.run_dir, 4)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(3) == 1 and steps.count(4) >= 1


def test_existing_run_needs_resume(tmp_path):
    cfg = config(tmp_path, "once", "model.name_or_path=tiny-qwen2", "training.max_steps=1")
    fit(cfg, show_progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        fit(cfg, show_progress=False)


def test_failing_rewards_stop_the_run_after_a_checkpoint(tmp_path):
    rows = [{"id": f"r{i}", "question": f"What is {i} + 1?", "answer": "many", "answer_type": "number"}
            for i in range(4)]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"run.output_dir={tmp_path}", "run.name=bad", "model.name_or_path=tiny-qwen2", f"data.train=[{{path: {data}}}]",
        "data.template=plain", "rollout.group_size=2", "rollout.max_new_tokens=4", "training.num_prompts=2",
        "training.max_steps=3", "training.tensorboard=false", "rewards.terms=[{name: numeric, accuracy: true}]",
    ])
    from reinforced.training.loop import RewardFailure

    with pytest.raises(RewardFailure, match="rewards failed"):
        fit(cfg, show_progress=False)
    assert (tmp_path / "bad" / "checkpoints" / "step-0" / "trainer_state.pt").exists()


def test_progressive_length_schedule_sets_the_budget_per_step(tmp_path):
    cfg = config(tmp_path, "ptst", "model.name_or_path=tiny-qwen2", "training.max_steps=3", "eval.sets=[]",
                 "rollout.max_new_tokens=2", "rollout.length_schedule=[[2, 5], [3, 9]]")
    result = fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    longest = {r["step"]: r["rollout/completion_len"] for r in rows if "rollout/completion_len" in r}
    assert longest[1] <= 2 and longest[2] <= 5 and longest[3] <= 9
    assert max(longest.values()) > 2  # the budget really grew (random models rarely stop early)


def test_device_setting(tmp_path):
    from reinforced.training.setup import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    cfg = config(tmp_path, "cpu", "model.name_or_path=tiny-qwen2", "training.max_steps=1", "run.device=cpu",
                 "eval.sets=[]")
    assert fit(cfg, show_progress=False).steps == 1
