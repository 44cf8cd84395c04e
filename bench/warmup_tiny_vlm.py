"""Reproduce the shipped ``reinforced-tiny-vlm`` checkpoint: build the tiny Qwen2-VL, SFT it on procedural
visual tasks (the cold start), measure greedy and sampled (T=1) held-out accuracy, save to assets/tiny-vlm.

    .venv/bin/python bench/warmup_tiny_vlm.py          # defaults reproduce the shipped checkpoint

Prompts use the ``plain`` template (image then question, no system prompt: ~70 tokens with the character
vocabulary); targets are ``<think>N shapes</think><answer>N</answer>``. 222 steps of 32 examples at a
constant 2e-3 (about 9 minutes on the shared 2-core CPU) stop deliberately short of convergence: GRPO needs
a base that sometimes fails and sometimes succeeds. Results go to ``<out>/warmup.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import reinforced.data.tasks.visual  # noqa: F401  (registers the visual tasks)
from reinforced.data.tasks.base import TASKS
from reinforced.data.templates import to_messages
from reinforced.models.tiny_vlm import BUILTIN_OPTIONS, build_tiny_vlm
from reinforced.models.vision import load_vlm, vision_forward_kwargs
from reinforced.training.sft import SFTBatch, collate_sft, encode_example, train_sft
from reinforced.types import Prompt

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def target_text(prompt: Prompt) -> str:
    """The warm-up completion: a one-line reasoning that states the result, then the tagged answer."""
    if prompt.task == "count_shapes":
        return f"<think>{prompt.answer} {prompt.metadata['shape']}s</think><answer>{prompt.answer}</answer>"
    if prompt.task == "digit_arithmetic":
        a, b = prompt.metadata["operands"]
        return f"<think>{a}{prompt.metadata['op']}{b}={prompt.answer}</think><answer>{prompt.answer}</answer>"
    return f"<think>{prompt.answer}</think><answer>{prompt.answer}</answer>"


def prompts(task: str, seed: int, max_difficulty: float) -> Iterator[Prompt]:
    rng = random.Random(seed)
    while True:
        yield TASKS[task].sample(rng, difficulty=rng.uniform(0.0, max_difficulty))


def batches(processor, tasks: list[str], seed: int, batch_size: int, max_difficulty: float,
            template: str) -> Iterator[SFTBatch]:
    streams = [prompts(t, seed + k, max_difficulty) for k, t in enumerate(tasks)]
    rng = random.Random(seed)
    while True:
        chosen = [next(rng.choice(streams)) for _ in range(batch_size)]
        examples = [encode_example(processor, p, target_text(p), to_messages(p, template)) for p in chosen]
        yield collate_sft(examples, processor.tokenizer.pad_token_id)


@torch.no_grad()
def evaluate(model, processor, held_out: list[Prompt], template: str, temperature: float, max_new_tokens: int = 24,
             seed: int = 0) -> float:
    """Accuracy of the tagged answer (exact string match), greedy when ``temperature`` is 0."""
    from reinforced.models.vision import encode_vlm

    model.eval()
    tok = processor.tokenizer
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, len(held_out), 32):
        chunk = held_out[start : start + 32]
        encoded = [encode_vlm(processor, to_messages(p, template), p.images, p.prompt_id) for p in chunk]
        length = max(len(ids) for ids, _ in encoded)
        ids = torch.tensor([[tok.pad_token_id] * (length - len(i)) + i for i, _ in encoded])  # [n, S] left-padded
        attn = torch.tensor([[0] * (length - len(i)) + [1] * len(i) for i, _ in encoded])
        vision = [v for _, v in encoded]
        done = torch.zeros(len(chunk), dtype=torch.bool)
        for _ in range(max_new_tokens):  # no KV cache: tiny model, short answers
            extra = vision_forward_kwargs(model.config, ids, vision)
            logits = model(input_ids=ids, attention_mask=attn, **extra).logits[:, -1].float()  # [n, V]
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            attn = torch.cat([attn, (~done).long()[:, None]], 1)
            done |= nxt == tok.eos_token_id
            if done.all():
                break
        for p, row in zip(chunk, ids[:, length:], strict=True):
            match = ANSWER.search(tok.decode(row, skip_special_tokens=True))
            correct += int(match is not None and match.group(1).strip() == p.answer)
    return correct / len(held_out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="src/reinforced/assets/tiny-vlm")
    ap.add_argument("--tasks", default="count_shapes")
    ap.add_argument("--minutes", type=float, default=None, help="optional wall-clock cap (not reproducible)")
    ap.add_argument("--max-steps", type=int, default=222)
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    ap.add_argument("--warmup", type=float, default=0.045, help="fraction of training spent warming up")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-difficulty", type=float, default=0.6)
    ap.add_argument("--eval-difficulty", default="0.4,0.6", help="comma-separated held-out difficulties")
    ap.add_argument("--template", default="plain")
    ap.add_argument("--num-eval", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on AVX512-BF16 CPUs)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_vlm("qwen2_vl", tmp, seed=args.seed, **BUILTIN_OPTIONS)
        model, processor = load_vlm(tmp)
    tasks = args.tasks.split(",")
    stream = batches(processor, tasks, args.seed, args.batch_size, args.max_difficulty, args.template)
    start = time.monotonic()

    def log(step: int, stats: dict[str, float]) -> None:
        if step % 50 == 0:
            print(f"step {step:5d}  {time.monotonic() - start:6.0f}s  loss {stats['loss']:.4f}  "
                  f"tok_acc {stats['token_accuracy']:.3f}  lr {stats['lr']:.2e}", flush=True)

    budget = None if args.minutes is None else args.minutes * 60
    history = train_sft(model, stream, args.max_steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule,
                        time_budget_s=budget, autocast=args.bf16, log=log)
    report = {"steps": len(history), "seconds": round(time.monotonic() - start), "final_loss": history[-1]["loss"]}
    for difficulty in (float(d) for d in args.eval_difficulty.split(",")):
        rng = random.Random(10_000 + args.seed)  # held out: a seed no training stream uses
        for t in tasks:
            held_out = [TASKS[t].sample(rng, difficulty=difficulty) for _ in range(args.num_eval)]
            report[f"{t}@{difficulty}/greedy"] = evaluate(model, processor, held_out, args.template, 0.0)
            report[f"{t}@{difficulty}/sampled_t1"] = evaluate(model, processor, held_out, args.template, 1.0)
    print(json.dumps(report, indent=1))
    out = Path(args.out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "warmup.json").write_text(json.dumps({**report, **vars(args)}, indent=1))


if __name__ == "__main__":
    main()
