"""Teacher-forced completion logprobs, and their agreement with the rollout engine's behaviour logprobs."""

from __future__ import annotations

import pytest
import torch

from reinforced.config import ModelConfig
from reinforced.models import Adapter, load_policy
from reinforced.rollout import BuiltinEngine
from reinforced.training.logprobs import completion_logprobs, token_logprobs
from reinforced.types import Prompt, RolloutGroup, SamplingParams, TrainBatch

PROMPTS = [
    Prompt(prompt_id="short", question="2+3"),
    Prompt(prompt_id="long", question="What is 17 + 25? Think step by step, then answer."),
]


def batch_from_groups(groups: list[RolloutGroup], pad_id: int) -> TrainBatch:
    """Prompts left-padded to S, completions right-padded to T (the TrainBatch layout)."""
    rows = [(g.prompt_ids, c) for g in groups for c in g.completions]
    s = max(len(p) for p, _ in rows)
    t = max(c.num_tokens for _, c in rows)
    n = len(rows)
    ids = torch.full((n, s + t), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    old = torch.zeros(n, t)
    for i, (p, c) in enumerate(rows):
        ids[i, s - len(p) : s] = torch.tensor(p)
        ids[i, s : s + c.num_tokens] = torch.tensor(c.token_ids)
        mask[i, s - len(p) : s + c.num_tokens] = 1
        old[i, : c.num_tokens] = torch.tensor(c.logprobs)
    return TrainBatch(
        input_ids=ids,
        attention_mask=mask,
        completion_mask=mask[:, s:].bool(),
        old_logprobs=old,
        advantages=torch.zeros(n, t),
        group_index=torch.arange(n) // max(1, groups[0].group_size),
        is_truncated=torch.tensor([c.truncated for _, c in rows]),
        prompt_len=s,
    )


def test_token_logprobs_matches_log_softmax_and_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 11)  # 6 rows: more than one chunk
    targets = torch.randint(0, 11, (6, 5))
    lp, ent = token_logprobs(logits, targets, temperature=0.7, with_entropy=True)
    ref = (logits / 0.7).log_softmax(-1)
    assert torch.allclose(lp, ref.gather(-1, targets[..., None]).squeeze(-1), atol=1e-6)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)
    assert token_logprobs(logits, targets)[1] is None
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0.0)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_engine_logprobs_equal_teacher_forced_forward(name: str) -> None:
    adapter = Adapter(load_policy(ModelConfig(name_or_path=name)), "plain")
    params = SamplingParams(group_size=3, max_new_tokens=12, temperature=0.8, top_k=50, top_p=0.9, seed=0)
    custom = Adapter(adapter.loaded, "plain")
    custom.eos_token_ids = tuple(range(100, 104))  # frequent "EOS": ragged lengths and right padding
    groups = BuiltinEngine(custom).generate(PROMPTS, params)
    lengths = {c.num_tokens for g in groups for c in g.completions}
    assert len(lengths) > 1  # ragged completions exercise right padding and row compaction
    batch = batch_from_groups(groups, adapter.pad_token_id)
    with torch.no_grad():
        lp, ent = completion_logprobs(adapter.model, adapter, batch, temperature=0.8, with_entropy=True)
    mask = batch.completion_mask
    assert torch.allclose(lp[mask], batch.old_logprobs[mask], atol=1e-4), (
        (lp - batch.old_logprobs).abs().max()
    )
    assert torch.all(lp[~mask] == 0) and torch.all(ent[~mask] == 0)
    assert torch.all(ent[mask] > 0) and torch.all(
        ent[mask] <= torch.log(torch.tensor(len(adapter.tokenizer))) + 1e-4
    )


def test_left_padding_and_batch_composition_do_not_change_logprobs() -> None:
    adapter = Adapter(load_policy(ModelConfig(name_or_path="tiny-llama")), "plain")
    groups = BuiltinEngine(adapter).generate(PROMPTS, SamplingParams(group_size=2, max_new_tokens=6, seed=1))
    both = batch_from_groups(groups, adapter.pad_token_id)
    alone = batch_from_groups(groups[:1], adapter.pad_token_id)  # the short prompt without left padding
    with torch.no_grad():
        lp_both, _ = completion_logprobs(adapter.model, adapter, both)
        lp_alone, _ = completion_logprobs(adapter.model, adapter, alone)
    t = lp_alone.shape[1]
    assert torch.allclose(lp_both[:2, :t], lp_alone, atol=1e-5)


def test_gradients_flow_and_full_logits_path_agrees() -> None:
    adapter = Adapter(load_policy(ModelConfig(name_or_path="tiny-qwen2")), "plain")
    groups = BuiltinEngine(adapter).generate(PROMPTS, SamplingParams(group_size=2, max_new_tokens=5, seed=2))
    batch = batch_from_groups(groups, adapter.pad_token_id)
    model = adapter.model
    lp, _ = completion_logprobs(model, adapter, batch)
    (lp * batch.completion_mask).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0

    class NoKeep(torch.nn.Module):  # a model whose forward has no logits_to_keep argument
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache=False):  # type: ignore[no-untyped-def]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    with torch.no_grad():
        full, _ = completion_logprobs(NoKeep(model), adapter, batch)
    assert torch.allclose(full, lp.detach(), atol=1e-5)
