"""Vision-language models through the same rollout and logprob path (tiny random models of real families)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from reinforced.config import ModelConfig
from reinforced.models import Adapter, load_policy, vision
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.rollout import BuiltinEngine
from reinforced.training.logprobs import completion_logprobs
from reinforced.types import Prompt, SamplingParams

_spec = importlib.util.spec_from_file_location("_lp", Path(__file__).with_name("test_logprobs.py"))
assert _spec is not None and _spec.loader is not None
_lp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_lp)

RED, BLUE = Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (0, 100, 200))


def _prompts(first: Image.Image) -> list[Prompt]:
    return [
        Prompt(prompt_id="img1", question="<image> What color?", images=(first,)),
        Prompt(prompt_id="text", question="A text-only prompt, longer than the others."),
        Prompt(prompt_id="img2", question="Describe <image>", images=(BLUE,)),
    ]


def _teacher_forced(adapter: Adapter, groups: list[Any], temperature: float) -> tuple[torch.Tensor, Any]:
    batch = _lp.batch_from_groups(groups, adapter.pad_token_id)
    per_sample = tuple(v for g in groups for v in vision.expand_vision(g.vision, g.group_size))
    batch = replace(batch, vision=per_sample)
    with torch.no_grad():
        lp, _ = completion_logprobs(adapter.model, adapter, batch, temperature=temperature)
    return lp, batch


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "idefics3", "llava"])
def test_vlm_engine_logprobs_equal_teacher_forced(family: str, tmp_path: Path) -> None:
    build_tiny_vlm(family, tmp_path, seed=0)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    assert loaded.is_vlm
    adapter = Adapter(loaded, "plain")
    engine = BuiltinEngine(adapter)
    params = SamplingParams(group_size=2, max_new_tokens=6, temperature=0.9, seed=0)
    groups = engine.generate(_prompts(RED), params)
    assert engine.last_stats["prefill_rows"] == 3  # images encoded once per prompt, not per sample
    assert groups[0].vision is not None and groups[1].vision is None
    lp, batch = _teacher_forced(adapter, groups, 0.9)
    mask = batch.completion_mask
    assert torch.allclose(lp[mask], batch.old_logprobs[mask], atol=1e-4)
    # the image reaches the logits: the same tokens score differently after another image
    other = [
        replace(g, prompt=p, vision=adapter.encode(p).vision)
        for g, p in zip(groups, _prompts(BLUE), strict=True)
    ]
    lp_other, _ = _teacher_forced(adapter, other, 0.9)
    assert not torch.allclose(lp_other[:2][mask[:2]], lp[:2][mask[:2]], atol=1e-4)
    assert torch.allclose(lp_other[2:][mask[2:]], lp[2:][mask[2:]], atol=1e-5)
