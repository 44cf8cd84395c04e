"""Rollout speed: vLLM engine vs the built-in engine on SmolLM2-135M-Instruct (run in .venv-vllm).

    reinforced models pull smollm2-135m-instruct      # once (in .venv-vllm)
    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python bench/vllm_rollout.py --repeats 2

Prints vLLM's start-up time, weight-sync time (after an in-place change of every weight, as an optimiser step
does), the logprob gap to the trainer's forward, and tokens/s of both engines at P x G = 4x8 and 16x8 (64 new
tokens, temperature 1), interleaved and repeated (this machine's speed drifts: compare side by side only).
Both engines sample from bf16 weights (``training.autocast=bf16``, rollout.vllm.dtype auto).
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--enforce-eager", action="store_true")
    args = ap.parse_args()

    from reinforced.config import ModelConfig, VLLMConfig
    from reinforced.data.tasks import TASKS
    from reinforced.models import load_policy
    from reinforced.models.processing import Adapter
    from reinforced.rollout.sampler import BuiltinEngine
    from reinforced.rollout.vllm_engine import VLLMEngine
    from reinforced.training.batch import collate_groups
    from reinforced.training.logprobs import completion_logprobs
    from reinforced.types import SamplingParams

    adapter = Adapter(load_policy(ModelConfig(name_or_path=args.model)), "think_answer")
    builtin = BuiltinEngine(adapter, autocast="bf16")
    vllm = VLLMEngine(adapter, autocast="bf16", settings=VLLMConfig(enforce_eager=args.enforce_eager))
    print(f"vLLM start-up: {vllm.startup_s:.1f} s (engine build + first weight load excluded from tokens/s)")
    vllm.sync_weights(force=True)
    with torch.no_grad():  # an in-place change of every weight, as after an optimiser step
        for p in adapter.model.parameters():
            p.mul_(1.0)
    t0 = time.perf_counter()
    sync_s = vllm.sync_weights()
    print(f"weight sync (reload_weights + prefix-cache reset): {sync_s:.3f} s ({time.perf_counter() - t0:.3f} s wall)")

    rng = random.Random(0)
    prompts = [TASKS["arithmetic"].sample(rng) for _ in range(16)]
    for num_prompts in (4, 16):
        params = SamplingParams(group_size=8, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=1)
        batch_prompts = prompts[:num_prompts]
        rates: dict[str, list[float]] = {"builtin": [], "vllm": []}
        for r in range(args.repeats):
            for name, engine in (("vllm", vllm), ("builtin", builtin)):
                start = time.perf_counter()
                groups = engine.generate(batch_prompts, params)
                seconds = time.perf_counter() - start
                tokens = sum(c.num_tokens for g in groups for c in g.completions)
                rates[name].append(tokens / seconds)
                print(f"{num_prompts}x8 {name} repeat {r + 1}: {tokens / seconds:.0f} tokens/s", flush=True)
                if name == "vllm" and r == 0:
                    batch = collate_groups(groups, pad_id=adapter.pad_token_id)
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                        trainer, _ = completion_logprobs(adapter.model, adapter, batch, temperature=1.0)
                    gap = (trainer.float() - batch.old_logprobs).abs()[batch.completion_mask]
                    print(f"{num_prompts}x8 logprob gap vLLM bf16 vs trainer (bf16 autocast): mean "
                          f"{float(gap.mean()):.4f} max {float(gap.max()):.4f}")
        for name, values in rates.items():
            print(f"{num_prompts}x8 {name}: tokens/s " + ", ".join(f"{v:.0f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
