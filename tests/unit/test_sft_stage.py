"""The SFT stage's loss and the rejection-sampling stage's selection (issue 10).

- the loss masks everything but the answer tokens: hand-computed on a two-token vocabulary, and on the tiny
  VLM with an image (no prompt or image-placeholder position is a target; the loss equals an independent sum);
- one normaliser per step: micro-batches of 1 give the gradient of the whole batch;
- rejection sampling keeps exactly the correct, well-formed samples, in the configured order.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

import reinforced.data.tasks.visual  # noqa: F401  (registers the visual tasks)
from reinforced.config import Config, load_config
from reinforced.data.tasks.base import TASKS
from reinforced.models import Adapter, load_policy
from reinforced.models.vision import vision_forward_kwargs
from reinforced.training.generate import keep_band, keep_samples, write_rows
from reinforced.training.sft import SFTExample, collate_sft, encode_target, sft_loss, sft_update, target_text
from reinforced.training.step import build_optimizer
from reinforced.types import Completion, Prompt, RolloutGroup


class PositionLogits(torch.nn.Module):
    """A stub LM over tokens {0, 1}: at position t the logits are [0, t] whatever the input."""

    config = SimpleNamespace(model_type="stub")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> SimpleNamespace:
        t = torch.arange(input_ids.shape[1], dtype=torch.float32)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(t), t], -1).expand(input_ids.shape[0], -1, -1))


def test_loss_is_hand_computed_on_answer_tokens_only() -> None:
    # prompt (0, 1), answer (1, 0): positions 1 and 2 predict the answer tokens 1 and 0.
    batch = collate_sft([SFTExample("a", (0, 1), (1, 0))], pad_id=0)
    loss, stats = sft_loss(PositionLogits(), batch)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  -log sigmoid(-x)
    expected = (softplus(-1.0) + softplus(2.0)) / 2  # -log p(1 | t=1) and -log p(0 | t=2)
    assert stats["num_tokens"] == 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_vlm() -> Adapter:
    return Adapter(load_policy(load_config(None, ["model.name_or_path=reinforced-tiny-vlm"]).model), "plain")


def test_image_prompt_masks_all_but_the_answer(tiny_vlm: Adapter) -> None:
    prompt = TASKS["count_shapes"].sample(random.Random(3))
    target = target_text(prompt, "trace")
    assert target == f"<think>I count {prompt.answer} {prompt.metadata['shape']}s.</think><answer>{prompt.answer}</answer>"
    example = encode_target(tiny_vlm, prompt, target)
    model = tiny_vlm.model
    image_id = model.config.image_token_id
    assert sum(i == image_id for i in example.prompt_ids) == 16  # the image is in the prompt, as rollouts see it
    assert example.target_ids[-1] == tiny_vlm.eos_token_ids[0]  # the end of the assistant turn is learned
    batch = collate_sft([example], tiny_vlm.pad_token_id)
    targets = batch.input_ids[0, 1:][batch.loss_mask[0]].tolist()
    assert targets == list(example.target_ids)  # exactly the answer tokens (and the end token) are targets
    assert not batch.loss_mask[0, : len(example.prompt_ids) - 1].any()
    with torch.no_grad():
        loss, _ = sft_loss(model, batch)
        ids = torch.tensor([list(example.prompt_ids) + list(example.target_ids)])
        logits = model(input_ids=ids, **vision_forward_kwargs(model.config, ids, [example.vision])).logits[0]
    s = len(example.prompt_ids)
    by_hand = -logits[s - 1 : -1].log_softmax(-1).gather(-1, ids[0, s:, None]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def _gradients(micro_batch_size: int, examples: list[SFTExample], adapter: Adapter) -> dict[str, torch.Tensor]:
    model = adapter.model
    model.zero_grad()
    cfg = Config().training.model_copy(update={"micro_batch_size": micro_batch_size, "lr": 0.0})
    opt, sched = build_optimizer(list(model.parameters()), cfg, total_steps=1)
    run = SimpleNamespace(cfg=SimpleNamespace(training=cfg), policy=SimpleNamespace(model=model),
                          updater=SimpleNamespace(optimizer=opt, scheduler=sched), adapter=adapter)
    grads: dict[str, torch.Tensor] = {}
    opt.step = lambda: grads.update({n: p.grad.clone() for n, p in model.named_parameters()})  # type: ignore[method-assign]
    sft_update(run, examples)
    return grads


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_micro_batches_share_one_normaliser(tiny_vlm: Adapter) -> None:
    rng = random.Random(0)
    prompts = [TASKS["count_shapes"].sample(rng) for _ in range(3)]
    examples = [encode_target(tiny_vlm, p, target_text(p, "trace")[: 20 + 9 * i]) for i, p in enumerate(prompts)]
    whole, split = _gradients(3, examples, tiny_vlm), _gradients(1, examples, tiny_vlm)
    for name, grad in whole.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6)


def _group(texts: list[str], accuracy: list[float], truncated: list[bool], fmt: list[float | None],
           rewards: list[float]) -> RolloutGroup:
    prompt = Prompt("p/0", "How many?", answer="3", task="count_shapes", reward_set="count_shapes")
    completions = tuple(Completion(t, tuple(range(len(t))), (0.0,) * len(t), "length" if tr else "stop")
                        for t, tr in zip(texts, truncated, strict=True))
    return RolloutGroup(prompt=prompt, completions=completions, rewards=tuple(rewards), accuracy=tuple(accuracy),
                        components={"format": tuple(fmt)})


def test_rejection_sampling_keeps_exactly_the_passing_samples(tmp_path) -> None:
    group = _group(["<a>3</a> long", "<a>3</a>", "3", "<a>4</a>", "<a>3</a> cut", "<a>3</a>", "<a>3</a> mid"],
                   accuracy=[1, 1, 1, 0, 1, 1, 1], truncated=[False, False, False, False, True, False, False],
                   fmt=[1, 1, 0, 1, 1, 1, None], rewards=[1.0, 1.1, 0.9, 0.1, 1.0, 1.1, 1.3])
    cfg = load_config(None, ["generate.keep_per_prompt=10"])
    rows, stats = keep_samples([group], cfg)
    # wrong (3), truncated (4), format 0 (2) and the duplicate text (5) are dropped; shortest first
    assert [r["meta"]["target"] for r in rows] == ["<a>3</a>", "<a>3</a> mid", "<a>3</a> long"]
    assert stats == {"samples": 7.0, "kept": 3.0, "kept_frac": 3 / 7, "kept/count_shapes": 3.0}
    by_score, _ = keep_samples([group], load_config(None, ["generate.keep_per_prompt=2", "generate.order=score"]))
    assert [r["meta"]["target"] for r in by_score] == ["<a>3</a> mid", "<a>3</a>"]
    loose, _ = keep_samples([group], load_config(None, ["generate.keep_per_prompt=10", "generate.well_formed=false"]))
    assert [r["meta"]["target"] for r in loose] == ["3", "<a>3</a>", "<a>3</a> cut", "<a>3</a> mid", "<a>3</a> long"]
    path = write_rows(tmp_path, rows)
    from reinforced.data.datasets import load_file

    loaded, _ = load_file(path)
    assert [p.metadata["target"] for p in loaded] == [r["meta"]["target"] for r in rows]
    assert {p.reward_set for p in loaded} == {"count_shapes"} and loaded[0].prompt_id == "p/0-s0"


def test_filter_keeps_the_pass_rate_band() -> None:
    groups = [_group(["a"] * 4, acc, [False] * 4, [1] * 4, [0.0] * 4)
              for acc in ([1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0])]
    rows, stats = keep_band(groups, (0.0, 1.0))
    assert [r["meta"]["pass_rate"] for r in rows] == [0.25, 0.5]
    assert stats["kept"] == 2 and stats["kept_frac"] == 0.5 and stats["pass_rate_mean"] == pytest.approx(0.4375)
