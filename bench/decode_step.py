"""Milliseconds per decode step of one model at batch B: dynamic KV cache (the built-in engine's), a
pre-allocated static cache, and a static cache with the forward under ``torch.compile``.

The rollout's per-token cost on CPU is one forward of B new tokens against the cache; this measures it
alone (greedy, bf16 weights, no sampling or stop-string work), the first step of each kind dropped and the
compile time printed apart. Written to decide whether the built-in engine should pre-allocate its cache or
compile its decode step (docs/performance.md: on the 2-core shared machine neither paid).

    python bench/decode_step.py --model smollm2-135m-instruct --batch 32 --new-tokens 64
"""

from __future__ import annotations

import argparse
import time

import torch


def decode(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, kind: str, forward=None  # noqa: ANN001
           ) -> tuple[float, float, list[int]]:
    """(ms per decode step after the first, seconds of the first, greedy tokens of the last step)."""
    from transformers import DynamicCache, StaticCache

    b, s = ids.shape
    static = kind != "dynamic"
    cache = StaticCache(config=model.config, max_cache_len=s + new_tokens) if static else \
        DynamicCache(config=model.config)
    forward = forward or model.forward
    mask = torch.ones(b, s, dtype=torch.long)
    with torch.inference_mode():
        tok = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)
        t0 = t1 = time.perf_counter()
        for t in range(new_tokens - 1):
            pos = s + t
            kwargs = {"cache_position": torch.tensor([pos])} if static else \
                {"attention_mask": (mask := torch.cat([mask, mask.new_ones(b, 1)], 1))}
            out = forward(input_ids=tok[:, None], cache=cache, use_cache=True, logits_to_keep=1,
                          position_ids=torch.full((b, 1), pos), **kwargs)
            tok = out.logits[:, -1].argmax(-1)
            if t == 0:
                t1 = time.perf_counter()
    return (time.perf_counter() - t1) / max(1, new_tokens - 2) * 1000, t1 - t0, tok.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()

    from reinforced.config import ModelConfig
    from reinforced.models import load_policy

    model = load_policy(ModelConfig(name_or_path=a.model)).model.to(torch.bfloat16).eval()
    ids = torch.randint(5, min(1000, model.config.vocab_size), (a.batch, a.prompt_tokens),
                        generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model.forward, dynamic=False)
    for _ in range(a.repeats):  # interleaved
        for kind, fwd in (("dynamic", None), ("static", None), ("static+compile", compiled)):
            ms, first, _ = decode(model, ids, a.new_tokens, kind, fwd)
            print(f"{a.model} batch {a.batch} {kind:>15}: {ms:7.1f} ms/step (first step {first:.1f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
