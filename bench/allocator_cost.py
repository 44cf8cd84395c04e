"""Time cost of ``training.release_memory``: one process per setting, to be alternated by the caller.

Loads SmolLM2-135M (fp32 weights), then 4 times: a bf16-autocast forward + backward + AdamW step on 8 x 170
tokens, and 32 x 32 greedy decode steps of a bf16 copy (dynamic KV cache, bench/decode_step.py); prints the
update seconds and decode ms/step of the last 3 rounds and the peak RSS. Settings: ``none`` (glibc's
defaults), ``trim`` (``malloc_trim`` after each phase), ``mmap`` (fixed 128 KiB mmap threshold + trim).

    for r in 1 2; do for m in none mmap trim; do OMP_NUM_THREADS=1 python bench/allocator_cost.py $m; done; done
"""

from __future__ import annotations

import copy
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode_step import decode  # noqa: E402


def main() -> None:
    from reinforced.config import ModelConfig
    from reinforced.models import load_policy
    from reinforced.training.allocator import configure_allocator, release_free_memory

    mode = sys.argv[1] if len(sys.argv) > 1 else "none"
    configure_allocator(mode)
    model = load_policy(ModelConfig(name_or_path="smollm2-135m-instruct")).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(5, 1000, (8, 170), generator=torch.Generator().manual_seed(0))
    rollout_model, updates, decodes = None, [], []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mode != "none":
            release_free_memory()
        updates.append(time.perf_counter() - t0)
        rollout_model = rollout_model or copy.deepcopy(model).to(torch.bfloat16).eval()
        decodes.append(decode(rollout_model, ids[:, :40].repeat(4, 1), 32, "dynamic")[0])
        if mode != "none":
            release_free_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{mode}: peak {peak:.2f} GiB, update s {[round(x, 2) for x in updates[1:]]}, "
          f"decode ms/step {[round(x, 1) for x in decodes[1:]]}")


if __name__ == "__main__":
    main()
