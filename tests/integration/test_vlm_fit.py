"""fit() end to end on tiny random VLMs of every family: images reach the loss, every parameter moves,
metrics are finite; shuffling a VLM batch (images travel with their rows) does not change the loss."""

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from reinforced.algorithms import LossNormalizer, policy_loss, resolve_spec
from reinforced.config import ModelConfig, load_config
from reinforced.data.tasks import TASKS
from reinforced.models import Adapter, load_policy
from reinforced.models.tiny_vlm import TINY_VLM_FAMILIES, build_tiny_vlm
from reinforced.rollout.sampler import BuiltinEngine, placeholder_token_ids
from reinforced.training.batch import collate_groups
from reinforced.training.logprobs import completion_logprobs
from reinforced.training.loop import fit
from reinforced.types import SamplingParams

FAMILIES = list(TINY_VLM_FAMILIES.names())
# Parameters outside the forward graph of the stock model: LLaVA reads the CLIP tower's hidden states
# (vision_feature_layer), which come before the tower's post_layernorm, so that norm never gets a gradient.
NOT_IN_GRAPH = {"llava": ("model.vision_tower.post_layernorm.",)}
TASK = "{task: count_shapes, params: {image_size: 32, difficulty: 0.6}}"  # tiny models see 32 px images
BASE = [
    f"data.train=[{TASK}]",
    "eval.sets=[{task: count_shapes, params: {image_size: 32}, limit: 4}]",
    "eval.max_prompts=4",
    "data.template=plain",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "training.num_prompts=2",
    "training.micro_batch_size=3",  # micro-batches split groups: images must follow their rows
    "training.lr=0.01",
    "training.max_steps=2",
    "training.tensorboard=false",
    "algorithm.kl.coef=0.04",  # a reference model too: its forward needs the images as well
    # A random model never counts right or stops: partial credit for any number in the text (random
    # characters hold digits) plus a length-shaped term give the groups reward variance (a gradient).
    "rewards.sets={count_shapes: [{name: count, accuracy: true, params: {partial: true, fallback: last_number}},"
    " {name: kimi_length}]}",
]


def weights(run_dir, step):
    """The checkpoint's parameters, reloaded through the model class (saved files use the hub's key names)."""
    loaded = load_policy(ModelConfig(name_or_path=str(run_dir / "checkpoints" / f"step-{step}" / "model")))
    return dict(loaded.model.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_two_steps_with_images_change_every_parameter(tmp_path, family):
    folder = build_tiny_vlm(family, tmp_path / "model")
    cfg = load_config(None, [*BASE, f"model.name_or_path={folder}", f"run.output_dir={tmp_path}",
                             f"run.name={family}"])
    loaded = load_policy(cfg.model)
    assert loaded.is_vlm
    initial = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    trainable = {k for k, p in loaded.model.named_parameters() if p.requires_grad}
    result = fit(cfg, show_progress=False)
    final = weights(result.run_dir, 2)
    assert trainable <= final.keys()
    checked = sorted(k for k in trainable if not k.startswith(NOT_IN_GRAPH.get(family, ())))
    unchanged = [k for k in checked if torch.equal(final[k], initial[k])]
    assert not unchanged, f"{family}: parameters that did not move: {unchanged}"
    assert any("visual" in k or "vision" in k for k in checked)  # the vision tower trained too
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        for key in ("train/loss", "train/grad_norm", "reward/mean", "reward/std", "train/kl_ref",
                    "train/entropy"):
            assert key in r and r[key] is not None and math.isfinite(r[key]), (key, r)
    assert any(r["advantage/std"] > 0 for r in train_rows)  # the shaped rewards made groups informative
    for key in ("eval/count_shapes/accuracy", "eval/count_shapes/completion_len"):
        assert math.isfinite(result.before[key]) and math.isfinite(result.after[key])


def test_shuffling_a_vlm_batch_keeps_the_loss(tmp_path):
    folder = build_tiny_vlm("qwen2_vl", tmp_path / "model")
    loaded = load_policy(ModelConfig(name_or_path=str(folder)))
    adapter = Adapter(loaded, "plain")
    prompts = [TASKS["count_shapes"].sample(random.Random(i), image_size=32, difficulty=0.6) for i in range(3)]
    params = SamplingParams(group_size=4, max_new_tokens=8, temperature=1.5, seed=0)
    groups = BuiltinEngine(adapter).generate(prompts, params)
    banned = placeholder_token_ids(loaded.model.config)
    assert not any(t in banned for g in groups for c in g.completions for t in c.token_ids)
    batch = collate_groups(groups, adapter.pad_token_id)
    assert len(batch.vision) == batch.num_samples == 12
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(batch.num_samples, 1, generator=g) * batch.completion_mask  # [N, T]
    with torch.no_grad():
        ref, _ = completion_logprobs(loaded.model, adapter, batch)
    batch = replace(batch, advantages=adv, ref_logprobs=ref + 0.1 * batch.completion_mask)
    spec = resolve_spec("grpo", {})
    loaded.model.eval()  # no dropout: the two forwards must see the same function

    def loss_of(b, micro_batch_size):
        normalizer = LossNormalizer.for_step(spec, b.completion_mask, params.max_new_tokens)
        total, logprobs = torch.zeros(()), []
        for micro in b.split(micro_batch_size):
            lp, ent = completion_logprobs(loaded.model, adapter, micro, with_entropy=True)
            loss, _ = policy_loss(spec, lp, micro.old_logprobs, micro.advantages, micro.completion_mask,
                                  normalizer, ref_logprobs=micro.ref_logprobs, entropy=ent)
            total = total + loss
            logprobs.append(lp.detach())
        return total, torch.cat(logprobs)

    full, full_lp = loss_of(batch, batch.num_samples)
    perm = torch.randperm(batch.num_samples, generator=g)
    shuffled, shuffled_lp = loss_of(batch.select(perm), 5)  # shuffled and split across groups
    torch.testing.assert_close(shuffled_lp, full_lp[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, full, atol=1e-6, rtol=1e-5)
    assert full.abs() > 0
    # The images matter: the same rows with their vision inputs rotated give other logprobs.
    rotated = replace(batch, vision=batch.vision[4:] + batch.vision[:4])
    _, rotated_lp = loss_of(rotated, batch.num_samples)
    assert not torch.allclose(rotated_lp, full_lp, atol=1e-4)
