"""The built-in rollout engine: sampling filters, finish reasons, seeds, one prefill per prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reinforced.config import ModelConfig
from reinforced.models import Adapter, load_policy
from reinforced.rollout import (
    ENGINES,
    BuiltinEngine,
    RolloutEngine,
    build_engine,
    filter_logits,
    sample_tokens,
)
from reinforced.types import Prompt, SamplingParams

PROMPTS = [
    Prompt(prompt_id="a", question="What is 2+3?"),
    Prompt(prompt_id="b", question="Compute 17 + 25 and explain each step carefully."),
    Prompt(prompt_id="c", question="9-4"),
]


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter(load_policy(ModelConfig(name_or_path="tiny-qwen2")), "plain")


def _tokens(groups: list[Any]) -> list[tuple[int, ...]]:
    return [c.token_ids for g in groups for c in g.completions]


def test_filter_logits_keeps_top_k_and_nucleus() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    kept = filter_logits(logits, top_k=7, top_p=1.0).isfinite()
    assert kept.sum(-1).tolist() == [7] * 5
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(7).indices, True))
    probs = logits.softmax(-1)
    nucleus = filter_logits(logits, top_k=0, top_p=0.8).isfinite()
    for row in range(5):  # the smallest top set whose mass reaches 0.8
        p = probs[row].sort(descending=True).values
        need = int((p.cumsum(0) < 0.8).sum()) + 1
        assert nucleus[row].sum() == need
        assert probs[row][nucleus[row]].min() >= probs[row][~nucleus[row]].max()


def test_sample_tokens_frequencies_and_prefilter_logprobs() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    tok, lp = sample_tokens(logits, temperature=2.0, top_k=2, generator=gen)
    assert set(tok.tolist()) == {0, 1}
    p = torch.tensor([2.0, 1.0]).div(2).softmax(0)  # renormalised over the top 2 at temperature 2
    assert abs((tok == 0).float().mean().item() - p[0].item()) < 0.02
    full = (logits[0] / 2).log_softmax(-1)  # behaviour logprobs are BEFORE filtering
    assert torch.allclose(lp, full[tok])


def test_registry_and_protocol(adapter: Adapter) -> None:
    engine = build_engine("builtin", adapter, autocast="none")
    assert isinstance(engine, BuiltinEngine) and isinstance(engine, RolloutEngine)
    with pytest.raises(KeyError, match="did you mean 'builtin'"):
        ENGINES["bultin"]


def test_groups_shapes_and_one_prefill_per_prompt(adapter: Adapter) -> None:
    calls: list[tuple[int, int]] = []
    model = adapter.model
    original = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    custom = Adapter(adapter.loaded, "plain")
    custom.eos_token_ids = (-1,)  # a random model may sample the real EOS; keep every row running
    engine = BuiltinEngine(custom)
    model.forward = counting  # type: ignore[method-assign]
    try:
        groups = engine.generate(PROMPTS, SamplingParams(group_size=4, max_new_tokens=6, seed=0))
    finally:
        del model.forward
    prefills = [c for c in calls if c[1] > 1]
    assert prefills == [(3, max(len(adapter.encode(p).input_ids) for p in PROMPTS))]  # P rows, not P*G
    assert all(c == (12, 1) for c in calls[1:]) and len(calls) == 6  # 1 prefill + 5 decode steps
    assert [g.prompt.prompt_id for g in groups] == ["a", "b", "c"]
    for g, p in zip(groups, PROMPTS, strict=True):
        assert g.group_size == 4 and g.vision is None
        assert list(g.prompt_ids) == adapter.encode(p).input_ids
        for c in g.completions:
            assert c.num_tokens == len(c.logprobs) == 6 and c.finish_reason == "length"
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.text == adapter.decode(c.token_ids)


def test_seed_reproducible_and_top_k_1_is_greedy(adapter: Adapter) -> None:
    engine = BuiltinEngine(adapter)
    params = SamplingParams(group_size=3, max_new_tokens=8, seed=7)
    first, again = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert _tokens(first) == _tokens(again)
    assert [c.logprobs for g in first for c in g.completions] == [
        c.logprobs for g in again for c in g.completions
    ]
    other = engine.generate(PROMPTS, SamplingParams(group_size=3, max_new_tokens=8, seed=8))
    assert _tokens(first) != _tokens(other)
    assert len(set(_tokens(first)[:3])) > 1  # samples within a group differ
    greedy = engine.generate(PROMPTS, SamplingParams(group_size=2, max_new_tokens=8, temperature=0.0))
    top1 = engine.generate(
        PROMPTS, SamplingParams(group_size=2, max_new_tokens=8, temperature=1.3, top_k=1, seed=3)
    )
    assert _tokens(greedy) == _tokens(top1)
    # greedy equals HF's own greedy generate on an unpadded prompt
    ids = torch.tensor([adapter.encode(PROMPTS[1]).input_ids])
    hf = adapter.model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert tuple(hf[0, ids.shape[1] :].tolist()) == _tokens(greedy)[2]


def test_eos_stops_and_is_kept(adapter: Adapter) -> None:
    engine = BuiltinEngine(adapter)
    params = SamplingParams(group_size=1, max_new_tokens=10, temperature=0.0)
    free = _tokens(engine.generate(PROMPTS, params))
    eos = free[0][3]  # pretend the 4th greedy token of prompt "a" is EOS
    custom = Adapter(adapter.loaded, "plain")
    custom.eos_token_ids = (eos,)
    groups = BuiltinEngine(custom).generate(PROMPTS, params)
    for g, ref in zip(groups, free, strict=True):
        c = g.completions[0]
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert c.token_ids == ref[:cut]
        assert c.finish_reason == ("stop" if eos in ref else "length")


def test_stop_strings_cut_text_and_keep_completing_token(adapter: Adapter) -> None:
    engine = BuiltinEngine(adapter)
    free = engine.generate(PROMPTS[:1], SamplingParams(group_size=1, max_new_tokens=12, temperature=0.0))[0]
    tokens = free.completions[0].token_ids
    text_of = [adapter.decode(tokens[: i + 1]) for i in range(len(tokens))]
    k = next(i for i in range(3, len(tokens)) if len(text_of[i]) > len(text_of[i - 1]) + 0)
    stop = text_of[k][len(text_of[k - 1]) - 1 :][:2]  # straddles the boundary of tokens k-1 and k
    stop = stop if stop not in text_of[k - 1] else text_of[k][-1]
    group = engine.generate(
        PROMPTS[:1], SamplingParams(group_size=1, max_new_tokens=12, temperature=0.0, stop=(stop,))
    )
    c = group[0].completions[0]
    first = next(i for i, t in enumerate(text_of) if stop in t)
    assert c.finish_reason == "stop" and c.token_ids == tokens[: first + 1]
    assert c.text.endswith(stop) and c.text.count(stop) == 1
    assert c.text == text_of[first][: text_of[first].index(stop) + len(stop)]


def test_compaction_does_not_change_results(adapter: Adapter) -> None:
    params = SamplingParams(group_size=2, max_new_tokens=12, temperature=0.0)
    free = _tokens(BuiltinEngine(adapter).generate(PROMPTS, params))
    custom = Adapter(adapter.loaded, "plain")
    custom.eos_token_ids = (free[0][2], free[4][5])  # rows finish at different steps
    eager = BuiltinEngine(custom, compact_fraction=0.0).generate(PROMPTS, params)
    never = BuiltinEngine(custom, compact_fraction=2.0).generate(PROMPTS, params)
    assert _tokens(eager) == _tokens(never)
    lps = [torch.tensor(c.logprobs) for g in never for c in g.completions]
    for a, b in zip([torch.tensor(c.logprobs) for g in eager for c in g.completions], lps, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert {c.finish_reason for g in eager for c in g.completions} == {"stop"}


def test_bf16_autocast_samples_valid_tokens(adapter: Adapter) -> None:
    groups = BuiltinEngine(adapter, autocast="bf16").generate(
        PROMPTS[:2], SamplingParams(group_size=2, max_new_tokens=5, seed=1)
    )
    for c in (c for g in groups for c in g.completions):
        assert all(0 <= t < len(adapter.tokenizer) for t in c.token_ids)
        assert all(torch.isfinite(torch.tensor(c.logprobs)))


def test_bad_inputs(adapter: Adapter) -> None:
    engine = BuiltinEngine(adapter, max_prompt_tokens=40)
    with pytest.raises(ValueError, match="prompt 'b' is .* tokens long, over rollout.max_prompt_tokens=40"):
        engine.generate(PROMPTS, SamplingParams(group_size=1, max_new_tokens=2))
    with pytest.raises(ValueError, match="exceed the model's context of 2048"):
        BuiltinEngine(adapter).generate(PROMPTS, SamplingParams(group_size=1, max_new_tokens=2040))
    with pytest.raises(ValueError, match="top_p=0.0"):
        BuiltinEngine(adapter).generate(PROMPTS, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="autocast must be"):
        BuiltinEngine(adapter, autocast="fp16")  # type: ignore[arg-type]
    assert BuiltinEngine(adapter).generate([], SamplingParams()) == []
