"""bf16 rollout: the engine samples from a bf16 copy of the weights that follows every training update."""

import torch

from reinforced.config import ModelConfig
from reinforced.models import Adapter, load_policy
from reinforced.rollout import build_engine
from reinforced.types import Prompt, SamplingParams


def test_bf16_copy_follows_the_training_weights():
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    engine = build_engine("builtin", Adapter(loaded, "plain"), autocast="bf16")
    prompts = [Prompt("a", "What is 1 + 2?")]
    params = SamplingParams(group_size=2, max_new_tokens=4, seed=0)
    engine.generate(prompts, params)
    copy = engine._bf16_copy
    assert copy is not None and copy is not loaded.model
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(b.dtype == torch.float32 for b in copy.buffers() if b.is_floating_point())
    with torch.no_grad():  # an "optimiser step" on the training weights
        for p in loaded.model.parameters():
            p.mul_(1.5)
    engine.generate(prompts, params)
    for dst, src in zip(copy.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(dst, src.detach().to(torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())  # training weights untouched
