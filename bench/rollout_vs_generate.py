"""Rollout tokens/s: the built-in engine against Hugging Face ``generate`` at equal batch, dtype and sampling.

Both sample P prompts x G completions of up to ``max_new_tokens`` from the same bf16 weights with the same
settings (temperature, top-k off, top-p 1, EOS stops a row): ``generate`` gets the P left-padded prompts
with ``num_return_sequences=G`` (TRL's call), the engine its one-prefill-per-prompt path. Tokens counted are
the completion tokens up to and including EOS. The two alternate, ``--repeats`` times each; the first of
each is dropped (warm-up). Medians are printed and the rows appended to bench/results_rollout_vs_generate.jsonl.

    python bench/rollout_vs_generate.py                                   # SmolLM2-135M, 4 x 8, 64 tokens
    python bench/rollout_vs_generate.py --model reinforced-tiny-vlm --task count_shapes --template plain
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def hf_generate(model: torch.nn.Module, adapter: Any, prompts: list, a: argparse.Namespace, eos: set[int]
                ) -> tuple[int, float]:
    """TRL's call: the P left-padded prompts, ``num_return_sequences=G``; (completion tokens, seconds)."""
    encoded = [adapter.encode(pr) for pr in prompts]
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), adapter.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e.input_ids):] = torch.tensor(e.input_ids)
        mask[i, width - len(e.input_ids):] = 1
    kwargs, _ = adapter.forward_kwargs(ids, mask, [e.vision for e in encoded])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**kwargs, do_sample=a.temperature > 0, temperature=a.temperature or None,
                             top_k=0, top_p=1.0, max_new_tokens=a.max_new_tokens,
                             num_return_sequences=a.group_size, pad_token_id=adapter.pad_token_id,
                             eos_token_id=sorted(eos))
    seconds = time.perf_counter() - t0
    new = out[:, width:].tolist()
    return sum(next((j + 1 for j, t in enumerate(row) if t in eos), len(row)) for row in new), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--template", default="think_answer")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args()

    from reinforced.config import load_config
    from reinforced.data import build_sampler
    from reinforced.models import Adapter, load_policy
    from reinforced.rollout.sampler import BuiltinEngine
    from reinforced.types import SamplingParams

    cfg = load_config(None, [f"model.name_or_path={a.model}", f"data.train=[{{task: {a.task}}}]",
                             f"data.template={a.template}"])
    loaded = load_policy(cfg.model)
    adapter = Adapter(loaded, cfg.data.template)
    engine = BuiltinEngine(adapter, autocast="bf16")
    hf_model = engine._rollout_model()  # the same bf16 weights for both
    params = SamplingParams(group_size=a.group_size, max_new_tokens=a.max_new_tokens,
                            temperature=a.temperature, top_p=1.0, top_k=0)
    sampler = build_sampler(cfg.data, cfg.run.seed)
    eos = set(adapter.eos_token_ids)

    def ours(prompts: list) -> tuple[int, float]:
        t0 = time.perf_counter()
        groups = engine.generate(prompts, params)
        return sum(len(c.token_ids) for g in groups for c in g.completions), time.perf_counter() - t0

    rows: dict[str, list[tuple[int, float]]] = {"reinforced": [], "hf_generate": []}
    for _ in range(a.repeats):
        prompts = sampler.next(a.num_prompts)
        for name, fn in (("reinforced", ours), ("hf_generate", lambda pr: hf_generate(hf_model, adapter, pr, a, eos))):
            rows[name].append(fn(prompts))
    result = {"model": a.model, "rows": a.num_prompts * a.group_size, "max_new_tokens": a.max_new_tokens,
              "dtype": "bf16", "temperature": a.temperature}
    print(f"{'impl':>12} {'tokens':>8} {'s':>8} {'tok/s':>8}")
    for name, runs in rows.items():
        kept = runs[1:] or runs
        tps = sum(n for n, _ in kept) / sum(s for _, s in kept)
        result[name] = {"tokens_per_s": tps, "median_s": statistics.median(s for _, s in kept),
                        "runs": runs}
        print(f"{name:>12} {statistics.median(n for n, _ in kept):>8.0f} "
              f"{result[name]['median_s']:>8.2f} {tps:>8.1f}")
    ratio = result["reinforced"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"]
    print(f"reinforced rollout: {ratio:.2f}x HF generate tokens/s (equal batch {result['rows']}, bf16, "
          f"temperature {a.temperature}, top-k off, top-p 1)")
    result["ratio"] = ratio
    with open(Path(__file__).with_name("results_rollout_vs_generate.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
