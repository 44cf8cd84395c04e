"""Supervised warm-up on a tiny VLM: loss on completion tokens only, it decreases, every parameter trains;
and the shipped reinforced-tiny-vlm checkpoint loads and reads images."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import reinforced.data.tasks.visual  # noqa: F401  (registers the visual tasks)
from reinforced.data.tasks.base import TASKS
from reinforced.models.tiny_vlm import build_tiny_vlm, builtin_tiny_vlm_path
from reinforced.models.vision import encode_vlm, load_vlm, vision_forward_kwargs
from reinforced.training.sft import SFTExample, collate_sft, encode_example, sft_loss, sft_step, train_sft


def messages(prompt) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.question}]}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model, processor = load_vlm(build_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("sft") / "m", seed=0))
    rng = random.Random(0)
    prompts = [TASKS["count_shapes"].sample(rng, image_size=32, grid=2) for _ in range(4)]
    examples = [encode_example(processor, p, f"<answer>{p.answer}</answer>", messages(p)) for p in prompts]
    return model, processor, examples


def test_loss_is_cross_entropy_of_target_tokens_only(tiny) -> None:
    model, processor, examples = tiny
    batch = collate_sft(examples[:2], processor.tokenizer.pad_token_id)
    loss, stats = sft_loss(model, batch)
    # Independent computation: per example, the logprob of each target token given everything before it.
    total, count = 0.0, 0
    for e in examples[:2]:
        ids = torch.tensor([list(e.prompt_ids) + list(e.target_ids)])
        with torch.no_grad():
            logits = model(input_ids=ids, **vision_forward_kwargs(model.config, ids, [e.vision])).logits[0]
        s = len(e.prompt_ids)
        logp = logits[s - 1 : -1].log_softmax(-1).gather(-1, ids[0, s:, None])
        total, count = total - float(logp.sum()), count + len(e.target_ids)
    assert stats["num_tokens"] == count
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_sft_lowers_loss_and_trains_every_parameter() -> None:
    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_vlm(build_tiny_vlm("qwen2_vl", tmp, seed=0))
    rng = random.Random(1)
    prompts = [TASKS["count_shapes"].sample(rng, image_size=32, grid=2) for _ in range(4)]
    examples = [encode_example(processor, p, f"<answer>{p.answer}</answer>", messages(p)) for p in prompts]
    batch = collate_sft(examples, processor.tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = sft_loss(model, batch)[0].item()
    history = train_sft(model, itertools.repeat(batch), max_steps=12, lr=3e-3, warmup=0.0)
    assert history[-1]["loss"] < 0.5 * first
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []  # vision tower included: the images reach the loss


def test_sft_step_on_mixed_text_and_image_rows(tiny) -> None:
    model, processor, examples = tiny
    text_ids = processor.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    text = SFTExample("text", tuple(text_ids), tuple(processor.tokenizer.encode("ok", add_special_tokens=False)))
    batch = collate_sft([examples[0], text, examples[1]], processor.tokenizer.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = sft_step(model, opt, batch)
    assert stats["num_tokens"] == len(examples[0].target_ids) + 2 + len(examples[1].target_ids)


def test_collate_rejects_empty() -> None:
    with pytest.raises(ValueError, match="'x'.*empty target"):
        collate_sft([SFTExample("x", (1,), ())], 0)


def test_shipped_checkpoint_reads_images() -> None:
    path = builtin_tiny_vlm_path()
    assert sum(f.stat().st_size for f in path.iterdir()) < 20 * 2**20
    model, processor = load_vlm(path)
    rng = random.Random(5)
    p = TASKS["count_shapes"].sample(rng, difficulty=0.0)
    ids, vision = encode_vlm(processor, messages(p), p.images, p.prompt_id)
    assert vision is not None and vision["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert sum(i == model.config.image_token_id for i in ids) == 16
