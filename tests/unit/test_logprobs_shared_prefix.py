"""The shared-prefix training forward (each prompt run once for its G completions) gives the same logprobs,
entropies and gradients as the full teacher-forced forward, for text models and VLMs."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from reinforced.config import ModelConfig
from reinforced.models import Adapter, load_policy, vision
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.training.logprobs import completion_logprobs
from reinforced.types import Prompt


def forward_and_grads(model, adapter, batch, share):
    model.zero_grad()
    lp, ent = completion_logprobs(model, adapter, batch, temperature=0.7, with_entropy=True, share_prefix=share,
                                  entropy_grad=True)
    (lp.sum() + 0.1 * ent.sum()).backward()
    return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same(model, adapter, batch):
    a = forward_and_grads(model, adapter, batch, share=False)
    b = forward_and_grads(model, adapter, batch, share=True)
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-5)
    assert len(a[2]) == len(b[2])
    for x, y in zip(a[2], b[2], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_text_models(make_batch, name):
    loaded = load_policy(ModelConfig(name_or_path=name))
    adapter = Adapter(loaded, "plain")
    prompts = [Prompt("a", "What is 1 + 2?"), Prompt("b", "What is 13 + 27? Explain each step.")]
    assert_same(loaded.model, adapter, make_batch(adapter, prompts))


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_vision_language_models(make_batch, family, tmp_path):
    build_tiny_vlm(family, tmp_path, seed=0)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    adapter = Adapter(loaded, "plain")
    red, blue = Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (0, 100, 200))
    prompts = [Prompt("a", "<image> What color?", images=(red,)), Prompt("t", "Text only, a longer prompt."),
               Prompt("b", "Describe <image>", images=(blue,))]
    assert_same(loaded.model, adapter, make_batch(adapter, prompts))


@pytest.mark.parametrize("share", [False, True])
def test_vlm_batch_without_its_images_fails_loudly(make_batch, tmp_path, share):
    build_tiny_vlm("qwen2_vl", tmp_path, seed=0)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    adapter = Adapter(loaded, "plain")
    batch = make_batch(adapter, [Prompt("a", "<image> What color?", images=(Image.new("RGB", (32, 32)),))])
    with pytest.raises(vision.VisionError, match="no vision inputs"):
        completion_logprobs(loaded.model, adapter, replace(batch, vision=()), share_prefix=share)
