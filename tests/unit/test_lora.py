"""LoRA through PEFT: adapters in place, the disabled adapter as the reference, adapter checkpoints, export.

A fresh LoRA update is zero (B = 0), so every test that compares the adapted model with its base first moves
the adapter (``perturb``): otherwise "adapted equals base" would hold for a model with no adapter at all.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from reinforced.config import ConfigError, ModelConfig, load_config
from reinforced.models import Adapter, load_policy, lora
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.rollout import BuiltinEngine
from reinforced.training.batch import collate_groups
from reinforced.training.logprobs import completion_logprobs
from reinforced.types import Prompt, SamplingParams

LORA = "{r: 4, alpha: 8}"
PROMPTS = [Prompt(prompt_id="a", question="2+3"), Prompt(prompt_id="b", question="What is 17 + 25?")]


def lora_policy(name: str = "tiny-qwen2", **extra):
    return load_policy(ModelConfig(name_or_path=name, lora=dict(r=4, alpha=8), **extra))


def perturb(loaded, seed: int = 0) -> None:
    """Random adapter weights, large enough to change the greedy tokens of a tiny model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))


def rollout_batch(loaded, autocast: str = "none"):
    engine = BuiltinEngine(Adapter(loaded, "plain"), autocast=autocast)
    groups = engine.generate(PROMPTS, SamplingParams(group_size=2, max_new_tokens=6, temperature=1.0, seed=3))
    return engine, groups, collate_groups(groups, pad_id=loaded.tokenizer.pad_token_id)


def logprobs(model, loaded, batch):
    with torch.no_grad():
        return completion_logprobs(model, Adapter(loaded, "plain"), batch)[0]


def test_only_adapter_layers_train_and_default_targets_are_the_projections():
    loaded = lora_policy()
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(lora.DEFAULT_PROJECTIONS)
    assert loaded.peft.base_model.model is loaded.model  # in place: engine and trainer use the same object


def test_disabled_adapter_reference_equals_the_base_model_exactly():
    loaded = lora_policy()
    perturb(loaded)
    base = load_policy(ModelConfig(name_or_path="tiny-qwen2"))  # the same seeded weights, no adapter
    _, _, batch = rollout_batch(loaded)
    adapted = logprobs(loaded.model, loaded, batch)
    with lora.disabled_adapter(loaded) as reference:
        assert reference is loaded.model  # no second copy
        ref = logprobs(reference, loaded, batch)
    assert torch.equal(ref, logprobs(base.model, base, batch))
    assert not torch.allclose(adapted, ref)  # the adapter is on again outside the block, and it matters
    assert torch.equal(logprobs(loaded.model, loaded, batch), adapted)


def test_run_holds_no_reference_copy_under_lora(tmp_path):
    from reinforced.training.setup import setup

    cfg = load_config(None, ["model.name_or_path=tiny-qwen2", f"model.lora={LORA}", "algorithm.kl.coef=0.04",
                             f"run.output_dir={tmp_path}", "data.train=[{task: arithmetic}]"])
    run = setup(cfg)
    try:
        assert run.reference is None and run.has_reference
        with run.reference_model() as reference:
            assert reference is run.policy.model
        optimised = {id(p) for g in run.updater.optimizer.param_groups for p in g["params"]}
        assert optimised == {id(p) for n, p in run.policy.model.named_parameters() if "lora_" in n}
    finally:
        run.release()


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_engine_samples_the_adapted_weights(autocast):
    loaded = lora_policy()
    perturb(loaded)
    engine, groups, batch = rollout_batch(loaded, autocast)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        adapted = logprobs(loaded.model, loaded, batch)
        with lora.disabled_adapter(loaded) as base:
            ref = logprobs(base, loaded, batch)
    behaviour = batch.old_logprobs
    m = batch.completion_mask
    gap, base_gap = (behaviour - adapted)[m].abs().mean(), (behaviour - ref)[m].abs().mean()
    # bf16: the engine's bf16 weights against fp32 weights under bf16 autocast differ by rounding only
    assert gap < (1e-5 if autocast == "none" else 0.03)
    assert base_gap > 10 * max(float(gap), 0.01)  # the base alone did not produce these logprobs
    before = {n: p.clone() for n, p in loaded.model.named_parameters() if "base_layer" in n}
    engine.generate(PROMPTS, SamplingParams(group_size=2, max_new_tokens=4, temperature=1.0, seed=4))
    after = dict(loaded.model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in before.items())  # sampling merged nothing into the base


def test_export_merges_the_adapter_into_a_plain_transformers_folder(tmp_path):
    loaded = lora_policy()
    perturb(loaded)
    lora.saveable(loaded).save_pretrained(tmp_path / "adapter")
    loaded.tokenizer.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "tiny-qwen2"
    out = lora.export_merged(tmp_path / "adapter", tmp_path / "export")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no PEFT
    assert not any("lora" in k for k in merged.state_dict())
    ids = torch.tensor([[5, 17, 42, 9, 3, 77, 12]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, loaded.model(ids).logits, rtol=1e-5, atol=1e-5)
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
        assert torch.equal(merged.generate(ids, **greedy), loaded.model.generate(ids, **greedy))
    # the checkpoint folder itself evaluates as base + adapter
    reloaded = load_policy(ModelConfig(name_or_path=str(tmp_path / "adapter")))
    with torch.no_grad():
        assert torch.equal(reloaded.model(ids).logits, loaded.model(ids).logits)


def test_vlm_default_targets_leave_the_vision_tower_frozen(tmp_path):
    folder = build_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")  # its vision MLP is named gate/up/down_proj too
    loaded = load_policy(ModelConfig(name_or_path=str(folder), lora=dict(r=2, alpha=4)))
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    named = load_policy(ModelConfig(name_or_path=str(folder), lora=dict(r=2, target_modules=["qkv"])))
    assert all("visual" in n for n, p in named.model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="freeze_vision_tower"):
        load_policy(ModelConfig(name_or_path=str(folder), freeze_vision_tower=True,
                                lora=dict(r=2, target_modules=["qkv"])))


def test_bad_lora_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="rank"):
        load_config(None, ["model.lora={r: 4, rank: 8}"])
    with pytest.raises(ConfigError, match="model.lora.r"):
        load_config(None, ["model.lora={r: 0}"])
    with pytest.raises(ConfigError, match="training.autocast=none"):
        load_config(None, ["model.lora={quantization: 4bit}", "training.autocast=bf16"])
    with pytest.raises(ValueError, match="target_modules"):
        load_policy(ModelConfig(name_or_path="tiny-qwen2", lora=dict(target_modules=["no_such_layer"])))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_is_refused_without_a_gpu(bits):
    cfg = load_config(None, ["model.name_or_path=tiny-qwen2", f"model.lora={{r: 4, quantization: {bits}}}"])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_policy(cfg.model)


def test_lora_with_fsdp2_is_a_clear_error():
    from reinforced.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="fsdp2 is not supported"):
        load_config(None, ["model.name_or_path=tiny-qwen2", "model.lora.r=4", "training.strategy=fsdp2"])
