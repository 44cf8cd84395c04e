"""How one reinforced GRPO step grows with the work: step time and peak RSS against G and max_new_tokens.

SmolLM2-135M (bf16, 4 prompts): G in (4, 8, 16) at 64 new tokens, and max_new_tokens in (64, 256, 1024)
at G = 8 (the long chain-of-thought regime). Each point runs ``bench/compare_trl.py``'s reinforced side in its
own process (so peak RSS is per point), for ``--steps`` steps; the first is dropped as warm-up. Prints a table
and appends the rows to bench/results_scaling.jsonl. Long (tens of minutes): ``make bench-scaling``.

    python bench/scaling.py
    python bench/scaling.py --group-sizes 4 8 --max-new-tokens 64 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def point(model: str, g: int, m: int, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, str(HERE / "compare_trl.py"), "--side", "reinforced", "--bf16", "--model", model,
           "--group-size", str(g), "--max-new-tokens", str(m), "--steps", str(steps), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"scaling point G={g} max_new_tokens={m} failed")
    return {"group_size": g, "max_new_tokens": m, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--group-sizes", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--max-new-tokens", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, default=3)
    a, extra = p.parse_known_args()  # the rest goes to compare_trl.py (e.g. --micro-batch-size 8)
    points = [(g, 64) for g in a.group_sizes] + [(8, m) for m in a.max_new_tokens if m != 64 or 8 not in
                                                 a.group_sizes]
    rows = []
    for g, m in points:
        rows.append(point(a.model, g, m, a.steps, extra))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'G':>4} {'new tok':>8} {'tokens':>8} {'s/step':>8} {'rollout s':>10} {'update s':>9} "
          f"{'tok/s':>7} {'peak RSS GiB':>13}")
    for r in rows:
        tokens = r["rollout_tokens_per_s"] * r["rollout_s"]
        print(f"{r['group_size']:>4} {r['max_new_tokens']:>8} {tokens:>8.0f} {r['step_s']:>8.2f} "
              f"{r['rollout_s']:>10.2f} {r['update_s']:>9.2f} {r['rollout_tokens_per_s']:>7.1f} "
              f"{r['peak_rss_gib']:>13.2f}")
    with open(HERE / "results_scaling.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
