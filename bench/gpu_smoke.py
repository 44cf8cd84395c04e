"""GPU smoke run: FSDP2 training with the vLLM rollout engine on a real model; prints tokens/s and step time.

Launches ``torchrun --nproc-per-node N -m reinforced train`` with ``training.strategy=fsdp2`` (or ``--strategy``)
and ``rollout.engine=vllm`` (``--engine builtin`` for the library's own sampler), a few steps of GRPO on the
procedural arithmetic task, then reads the run's ``metrics.jsonl`` and prints, per step and as a mean over the
steps after the first (warm-up: compilation, CUDA graphs), the step time, rollout time, update time and
rollout tokens/s (all ranks together). Exit status: torchrun's, or 1 when the metrics are missing.

Needs CUDA: without a visible GPU it stops at once with a message (it never falls back to the CPU). vLLM lives
in its own environment (``make test-vllm`` builds ``.venv-vllm``; README "vLLM rollout engine"); run this script
with that environment's Python, or pass ``--python``.

    .venv-vllm/bin/python bench/gpu_smoke.py --model Qwen/Qwen2.5-0.5B-Instruct --gpus 8
    python bench/gpu_smoke.py --model /models/qwen2.5-0.5b --gpus 2 --engine builtin --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN_NAME = "gpu_smoke"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder or hub id (model.name_or_path)")
    p.add_argument("--gpus", type=int, default=1, help="processes (one GPU each) on this node")
    p.add_argument("--strategy", default="fsdp2", choices=["fsdp2", "ddp", "single"])
    p.add_argument("--engine", default="vllm", choices=["vllm", "builtin"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=64, help="training.num_prompts (global batch)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--python", default=sys.executable, help="the interpreter with reinforced (and vllm)")
    p.add_argument("--out", default=None, help="run.output_dir (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    return p.parse_args(argv)


def require_cuda() -> int:
    """The number of visible GPUs; exits with a clear message when there is none."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA GPU is visible (torch.cuda.is_available() is False; torch "
                 f"{torch.__version__}, CUDA build {torch.version.cuda}). This benchmark measures GPU training; "
                 "run it on a GPU machine with a CUDA build of torch.")
    return torch.cuda.device_count()


def command(ns: argparse.Namespace, out: str) -> list[str]:
    strategy = "single" if ns.gpus == 1 and ns.strategy != "single" else ns.strategy
    overrides = [
        f"model.name_or_path={ns.model}", "data.train=[{task: arithmetic}]", f"rollout.engine={ns.engine}",
        f"rollout.group_size={ns.group_size}", f"rollout.max_new_tokens={ns.max_new_tokens}",
        f"training.num_prompts={ns.prompts}", f"training.micro_batch_size={ns.micro_batch}",
        f"training.max_steps={ns.steps}", "training.autocast=bf16", f"training.strategy={strategy}",
        "training.report_to=[]", "eval.sets=[]", f"run.output_dir={out}", f"run.name={RUN_NAME}", *ns.overrides,
    ]
    launch = [ns.python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ns.gpus}"] \
        if strategy != "single" else [ns.python]
    return [*launch, "-m", "reinforced", "train", *overrides, "--no-progress"]


def report(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        print(f"gpu_smoke: no metrics at {path}", file=sys.stderr)
        return 1
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "perf/step_s" in r]
    keys = ("perf/step_s", "perf/rollout_s", "perf/update_s", "perf/tokens_per_s")
    print("step  " + "  ".join(f"{k.split('/')[1]:>14s}" for k in keys))
    for r in rows:
        print(f"{r['step']:4d}  " + "  ".join(f"{r[k]:14.2f}" for k in keys))
    steady = rows[1:] or rows
    if not steady:
        print("gpu_smoke: no training step was logged", file=sys.stderr)
        return 1
    print("mean  " + "  ".join(f"{statistics.mean(r[k] for r in steady):14.2f}" for k in keys)
          + f"   (steps {steady[0]['step']}-{steady[-1]['step']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    visible = require_cuda()
    if ns.gpus > visible:
        sys.exit(f"gpu_smoke: --gpus {ns.gpus} but only {visible} CUDA GPU(s) are visible")
    out = ns.out or tempfile.mkdtemp(prefix="gpu_smoke-")  # a run already in --out is an error (no overwrite)
    cmd = command(ns, out)
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        return done.returncode
    return report(Path(out) / RUN_NAME)


if __name__ == "__main__":
    sys.exit(main())
