"""Peak memory and time of one training forward+backward of the logprob loss: fused LM head vs full logits.

The model is a random-weight Llama with SmolLM2-135M's shape (49,152-token vocabulary, hidden 576, 30 layers,
tied embeddings; built offline, no hub). The batch is like the bench's: ``--rows`` completions (groups of
``--group-size`` sharing a prompt of ``--prompt-len`` tokens), completion lengths drawn in
[``--min-len``, ``--max-len``] and right-padded. The loss is sum(logprobs * advantages) with the entropy as a
metric (``--entropy-grad`` puts it in the loss), as ``training.step`` does.

Each variant runs in a fresh subprocess, so its peak is its own: on CPU the peak RSS above the RSS just before
the forward (VmHWM, reset through /proc/self/clear_refs where the kernel allows, else ru_maxrss), on CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated before it. Time is the median of ``--repeats``
forward+backward passes after one warm-up.

    python bench/logprob_memory.py                                    # the real measurement (minutes)
    python bench/logprob_memory.py --layers 2 --rows 4 --max-len 64   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

VARIANTS = ("fused", "plain")


class TextAdapter:
    """The two ``Adapter`` methods the training forward calls, for a text model (no tokenizer needed)."""

    def forward_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: Any
                       ) -> tuple[dict[str, Any], None]:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions}, None

    def decode_position_ids(self, text_positions: torch.Tensor, rope_deltas: Any) -> torch.Tensor:
        return text_positions


def build_model(a: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=a.vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=a.layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(a.device).train()


def build_batch(a: argparse.Namespace) -> Any:
    from reinforced.types import TrainBatch

    g = torch.Generator().manual_seed(0)
    n, s, t = a.rows, a.prompt_len, a.max_len
    groups = torch.arange(n) // a.group_size
    prompts = torch.randint(0, a.vocab, (int(groups.max()) + 1, s), generator=g)
    ids = torch.cat([prompts[groups], torch.randint(0, a.vocab, (n, t), generator=g)], dim=1)
    lengths = torch.randint(a.min_len, t + 1, (n,), generator=g)
    mask = torch.cat([torch.ones(n, s, dtype=torch.long), (torch.arange(t) < lengths[:, None]).long()], dim=1)
    completion = mask[:, s:].bool()
    return TrainBatch(
        input_ids=ids, attention_mask=mask, completion_mask=completion, old_logprobs=torch.zeros(n, t),
        advantages=torch.randn(n, t, generator=g) * completion, group_index=groups,
        is_truncated=torch.zeros(n, dtype=torch.bool), prompt_len=s,
    ).to(torch.device(a.device))


def _reset_cpu_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: peak memory above the pre-forward baseline, median step time."""
    from reinforced.training.logprobs import completion_logprobs

    torch.set_num_threads(a.threads)
    model, batch, adapter = build_model(a), build_batch(a), TextAdapter()
    cuda = a.device.startswith("cuda")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(a.device).type, dtype=torch.bfloat16, enabled=a.bf16):
            lp, _ = completion_logprobs(model, adapter, batch, with_entropy=True, share_prefix=a.share_prefix,
                                        entropy_grad=a.entropy_grad, fused=a.variant == "fused")
        (lp * batch.advantages).sum().backward()

    step()  # warm-up: allocator pools and .grad buffers exist before the baseline
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_cpu_peak()
        base = _status_kib("VmRSS") * 1024
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = int(batch.completion_mask.sum())
    return {"variant": a.variant, "peak_extra_gib": (peak - base) / 2**30, "peak_gib": peak / 2**30,
            "step_s": statistics.median(times), "completion_tokens": tokens,
            "logits_fp32_gib": batch.completion_mask.numel() * a.vocab * 4 / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights), as training.autocast=bf16")
    p.add_argument("--entropy-grad", action="store_true")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--variant", choices=VARIANTS, help="(internal) measure one variant in this process")
    a = p.parse_args()
    if a.min_len > a.max_len:
        p.error(f"--min-len {a.min_len} > --max-len {a.max_len}")
    if a.variant:
        print(json.dumps(measure(a)))
        return
    results = []
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{a.rows} rows x {a.min_len}-{a.max_len} tokens, vocab {a.vocab}, {a.layers} layers, {a.device}"
          f"{', bf16 autocast' if a.bf16 else ''}; [n, T, V] fp32 logits would be "
          f"{results[0]['logits_fp32_gib']:.2f} GiB")
    print(f"{'variant':8} {'peak above baseline GiB':>24} {'step s':>8}")
    for r in results:
        print(f"{r['variant']:8} {r['peak_extra_gib']:24.2f} {r['step_s']:8.2f}")
    fused, plain = results
    print(f"fused / plain: memory {fused['peak_extra_gib'] / plain['peak_extra_gib']:.2f}x, "
          f"time {fused['step_s'] / plain['step_s']:.2f}x")


if __name__ == "__main__":
    main()
