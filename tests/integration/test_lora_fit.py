"""LoRA runs end to end: only the adapter moves, the KL reference is the base, resume is bitwise, the export
merges, and a vision-language family trains with adapters on its language model."""

import json
import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reinforced.config import load_config
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.training.loop import fit, train
from reinforced.training.setup import setup

LORA = "model.lora={r: 4, alpha: 16}"
BASE = [
    "data.train=[{task: arithmetic}]",
    "data.template=plain",
    "eval.sets=[{task: arithmetic, limit: 4}]",
    "eval.max_prompts=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "training.num_prompts=2",
    "training.micro_batch_size=3",
    "training.lr=0.05",
    "training.report_to=[]",
    "algorithm.kl.coef=0.04",
    "model.name_or_path=tiny-qwen2",
    # random tiny models never answer right: a length-shaped term gives the groups reward variance
    "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
]


def config(tmp_path, name, *extra):
    return load_config(None, [*BASE, LORA, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def adapter(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model" / "adapter_model.safetensors"))


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_adapter_parameters_move_and_the_reference_is_the_base(tmp_path):
    run = setup(config(tmp_path, "moves", "training.max_steps=3"))
    before = {n: p.detach().clone() for n, p in run.policy.model.named_parameters()}
    try:
        train(run, {}, show_progress=False)
    finally:
        run.rewards.close()
        run.release()
    after = dict(run.policy.model.named_parameters())
    moved = {n for n, v in before.items() if not torch.equal(v, after[n])}
    lora_b = {n for n in before if ".lora_B." in n}
    assert moved and all("lora_" in n for n in moved)  # the base never moves
    assert lora_b <= moved  # every adapter's B left zero
    saved = adapter(run.run_dir, 3)
    assert saved and all("lora_" in k for k in saved)  # the checkpoint holds the adapter only
    rows = [r for r in metrics(run.run_dir) if "train/kl_ref" in r]
    assert rows[0]["train/kl_ref"] == 0.0  # step 1: the adapter is still zero, policy == base exactly
    assert rows[-1]["train/kl_ref"] > 0  # later: the policy moved away from the adapter-free reference
    assert math.isfinite(rows[-1]["train/loss"])


def test_resume_restores_adapter_and_optimiser_bitwise(tmp_path):
    common = ["training.checkpoint_every=2", "training.keep_checkpoints=5"]
    straight = fit(config(tmp_path, "straight", *common, "training.max_steps=4"), show_progress=False)
    fit(config(tmp_path, "resumed", *common, "training.max_steps=2"), show_progress=False)
    resumed = fit(config(tmp_path, "resumed", *common, "training.max_steps=4"), resume=True, show_progress=False)
    a, b = adapter(straight.run_dir, 4), adapter(resumed.run_dir, 4)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    sa = torch.load(straight.run_dir / "checkpoints/step-4/trainer_state.pt", weights_only=False)["optimizer"]
    sb = torch.load(resumed.run_dir / "checkpoints/step-4/trainer_state.pt", weights_only=False)["optimizer"]
    for i, state in sa["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(value, sb["state"][i][key], rtol=0, atol=0, msg=f"{i}.{key}")


def test_run_export_is_the_merged_adapted_model(tmp_path):
    result = fit(config(tmp_path, "export", "training.max_steps=2"), show_progress=False)
    cfg = yaml_config(result.run_dir)
    assert cfg["model"]["name_or_path"] == "tiny-qwen2" and cfg["model"]["lora"]["r"] == 4  # the run names the base
    merged = AutoModelForCausalLM.from_pretrained(result.run_dir / "export").eval()  # plain transformers
    from reinforced.config import ModelConfig
    from reinforced.models import load_policy

    adapted = load_policy(ModelConfig(name_or_path=str(result.run_dir / "checkpoints/step-2/model")))
    assert adapted.peft is not None
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted.model(ids).logits, rtol=1e-5, atol=1e-5)
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=adapted.tokenizer.pad_token_id)
        assert torch.equal(merged.generate(ids, **greedy), adapted.model.generate(ids, **greedy))


def yaml_config(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_vlm_with_lora_trains_two_steps(tmp_path):
    folder = build_tiny_vlm("qwen2_vl", tmp_path / "model")
    task = "{task: count_shapes, params: {image_size: 32, difficulty: 0.6}}"
    cfg = load_config(None, [
        *BASE, LORA, f"model.name_or_path={folder}", f"data.train=[{task}]",
        "eval.sets=[{task: count_shapes, params: {image_size: 32}, limit: 4}]", "training.max_steps=2",
        "rewards.sets={count_shapes: [{name: count, accuracy: true, params: {partial: true, "
        "fallback: last_number}}, {name: kimi_length}]}",
        f"run.output_dir={tmp_path}", "run.name=vlm"])
    result = fit(cfg, show_progress=False)
    saved = adapter(result.run_dir, 2)
    assert saved and not any("visual" in k for k in saved)  # the vision tower got no adapter
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if ".lora_B." in k)
    rows = [r for r in metrics(result.run_dir) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["train/kl_ref"]) for r in rows)
