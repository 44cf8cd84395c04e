"""Side-by-side speed of one GRPO setting through TRL's GRPOTrainer and through `reinforced`.

Same model, data, reward and settings for both: P prompts x G completions, max_new_tokens, beta (KL coef),
fp32 weights (optionally bf16 autocast for reinforced with --bf16). Each configuration runs in its own
subprocess (so peak RSS is per run); the two implementations are interleaved and the first step of every run
is dropped (warm-up), because this machine's speed drifts between runs.

    python bench/compare_trl.py                         # SmolLM2-135M-Instruct (pulled), beta 0 and 0.04
    python bench/compare_trl.py --model reinforced-tiny-vlm --task count_shapes --template plain --max-new-tokens 16

Prints median seconds per step, rollout tokens/s and peak RSS for both and their ratio.
TRL is a bench-only dependency: `pip install -e ".[bench]"` (make bench does it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reinforced_overrides(a: argparse.Namespace, out: str) -> list[str]:
    return [
        f"model.name_or_path={a.model}", f"data.train=[{{task: {a.task}}}]", "eval.sets=[]",
        f"data.template={a.template}",
        f"rollout.group_size={a.group_size}", f"rollout.max_new_tokens={a.max_new_tokens}",
        f"training.num_prompts={a.num_prompts}", f"training.micro_batch_size={a.micro_batch_size}",
        f"training.max_steps={a.steps}", f"algorithm.kl.coef={a.beta}", "training.tensorboard=false",
        f"training.autocast={'bf16' if a.bf16 else 'none'}", f"run.output_dir={out}", "run.name=bench",
        "training.samples_per_step=0", "training.lr=1e-6", *a.set,
    ]


def run_reinforced(a: argparse.Namespace) -> dict:
    from reinforced.config import load_config
    from reinforced.tracking.sinks import read_metrics
    from reinforced.training.loop import fit

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, reinforced_overrides(a, out))
        result = fit(cfg, show_progress=False)
        rows = [r for r in read_metrics(result.run_dir) if "perf/step_s" in r][1:]  # drop warm-up step
    keys = ("perf/step_s", "perf/rollout_s", "perf/reward_s", "perf/prepare_s", "perf/update_s")
    med = {k.split("/")[1]: statistics.median(r[k] for r in rows) for k in keys}
    tokens = statistics.median(r["rollout/num_tokens"] for r in rows)
    return {"impl": "reinforced", **med, "rollout_tokens_per_s": tokens / med["rollout_s"],
            "peak_rss_gib": peak_rss_gib()}


def run_trl(a: argparse.Namespace) -> dict:
    """TRL GRPOTrainer with the same prompts (our template) and our reward functions."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reinforced.config import load_config
    from reinforced.data import build_sampler
    from reinforced.data.templates import to_messages
    from reinforced.models import load_policy
    from reinforced.rewards import RewardComposer
    from reinforced.training.setup import task_reward_sets
    from reinforced.types import Completion, RolloutGroup

    cfg = load_config(None, reinforced_overrides(a, tempfile.mkdtemp()))
    loaded = load_policy(cfg.model)
    sampler = build_sampler(cfg.data, cfg.run.seed)
    prompts = sampler.next(a.num_prompts * (a.steps + 1))
    by_id = {p.prompt_id: p for p in prompts}
    rows = [{"prompt": to_messages(p, cfg.data.template), "prompt_id": p.prompt_id} for p in prompts]
    if loaded.is_vlm:  # TRL takes the images from an "images" column and the processor as processing_class
        from reinforced.models.vision import load_image

        for row, p in zip(rows, prompts, strict=True):
            row["images"] = [load_image(im, p.prompt_id) for im in p.images]
    composer = RewardComposer(cfg.rewards.terms, task_reward_sets(cfg), timeout_s=cfg.rewards.timeout_s)

    def reward(prompts, completions, prompt_id, completion_ids, **_):  # noqa: ANN001 - TRL's signature
        groups = [RolloutGroup(prompt=by_id[pid], completions=(
            Completion(text=c if isinstance(c, str) else c[-1]["content"], token_ids=tuple(ids),
                       logprobs=(0.0,) * len(ids), finish_reason="stop"),)) for pid, c, ids in
            zip(prompt_id, completions, completion_ids, strict=True)]
        scored, _ = composer.score(groups)
        return [g.rewards[0] for g in scored]

    times: list[float] = []
    gen_s: list[float] = []
    gen_tokens: list[int] = []
    generate = loaded.model.generate
    pad = loaded.tokenizer.pad_token_id

    def timed_generate(*args, **kwargs):  # noqa: ANN002, ANN003 - TRL's call
        t0 = time.perf_counter()
        out = generate(*args, **kwargs)
        gen_s.append(time.perf_counter() - t0)
        ids = getattr(out, "sequences", out)
        prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        gen_tokens.append(int((ids[:, prompt.shape[1]:] != pad).sum()))  # EOS == pad: stops are not counted
        return out

    loaded.model.generate = timed_generate

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):  # noqa: ANN002, ANN003
            self.t0 = time.perf_counter()

        def on_step_end(self, *args, **kwargs):  # noqa: ANN002, ANN003
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.num_prompts * a.group_size,
        num_generations=a.group_size, max_completion_length=a.max_new_tokens, beta=a.beta,
        learning_rate=1e-6, max_steps=a.steps, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, bf16=a.bf16, temperature=1.0, loss_type="grpo", seed=0, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=[reward], args=args,
                          train_dataset=Dataset.from_list(rows),
                          processing_class=loaded.processor if loaded.is_vlm else loaded.tokenizer,
                          callbacks=[Timer()])
    trainer.train()
    composer.close()
    step_s = statistics.median(times[1:])
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    return {"impl": "trl", "step_s": step_s, "rollout_s": statistics.median(gen_s[1:]),
            "rollout_tokens_per_s": sum(gen_tokens[1:]) / sum(gen_s[1:]), "peak_rss_gib": peak_rss_gib(),
            "total_tokens": tokens[-1] if tokens else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--template", default="think_answer")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.04])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--impls", nargs="+", default=["trl", "reinforced"])
    p.add_argument("--set", nargs="*", default=[], help="extra reinforced overrides (key=value), e.g. "
                   "training.gradient_checkpointing=true")
    p.add_argument("--side", choices=["trl", "reinforced"], help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:  # child process: one run, one JSON line
        print(json.dumps((run_trl if a.side == "trl" else run_reinforced)(a)))
        return
    results = []
    for beta in a.betas:
        for impl in a.impls:
            cmd = [sys.executable, __file__, "--side", impl, "--beta", str(beta), *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{impl} run failed (beta={beta})")
            row = {**json.loads(out.stdout.strip().splitlines()[-1]), "beta": beta, "model": a.model,
                   "overrides": a.set if impl == "reinforced" else []}
            results.append(row)
            print(json.dumps(row), flush=True)
            with open(Path(__file__).with_name("results_compare_trl.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n{'beta':>5} {'impl':>11} {'s/step':>8} {'rollout tok/s':>14} {'peak RSS GiB':>13}")
    for r in results:
        tps = r.get("rollout_tokens_per_s")
        print(f"{r['beta']:>5} {r['impl']:>11} {r['step_s']:>8.2f} {tps or float('nan'):>14.1f} "
              f"{r['peak_rss_gib']:>13.2f}")
    for beta in a.betas:
        by = {r["impl"]: r for r in results if r["beta"] == beta}
        if {"trl", "reinforced"} <= by.keys():
            ratio = by["trl"]["step_s"] / by["reinforced"]["step_s"]
            print(f"beta {beta}: reinforced is {ratio:.2f}x faster per step than TRL "
                  f"(breakdown s: rollout {by['reinforced']['rollout_s']:.2f}, reward "
                  f"{by['reinforced']['reward_s']:.2f}, ref/critic forward {by['reinforced']['prepare_s']:.2f}, "
                  f"update {by['reinforced']['update_s']:.2f})")
    trl, ours = ([r for r in results if r["impl"] == impl] for impl in ("trl", "reinforced"))
    if trl and ours:  # the targets: against TRL's best configuration, memory against TRL's in the same run
        best_trl, best_ours = min(r["step_s"] for r in trl), min(r["step_s"] for r in ours)
        rss_trl, rss_ours = min(r["peak_rss_gib"] for r in trl), max(r["peak_rss_gib"] for r in ours)
        print(f"best: reinforced {best_ours:.2f} s/step vs TRL {best_trl:.2f} ({best_trl / best_ours:.2f}x); "
              f"peak RSS {rss_ours:.2f} GiB (largest) vs TRL {rss_trl:.2f} (smallest): {rss_ours / rss_trl:.2f}")


if __name__ == "__main__":
    main()
