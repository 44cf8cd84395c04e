"""Where one RL step's time and memory go: peak RSS and seconds per phase (rollout, reward, prepare, update).

A sampler thread reads the process's resident set (``/proc/self/statm``) every 10 ms while ``fit`` runs; the
engine's ``generate``, the reward composer and the updater's ``update`` are wrapped to label the phases.
Measured per step (the first step includes start-up effects), so a change to one phase shows in its row.

    python bench/profile_step.py                                      # SmolLM2-135M, 4 x 8, 64 tokens, bf16
    python bench/profile_step.py --set training.gradient_checkpointing=true

Writes the rows as JSON lines to bench/results_profile_step.jsonl (appends) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**30


class PhaseMeter:
    """Peak RSS per labelled phase, sampled by a daemon thread."""

    def __init__(self) -> None:
        self.phase, self.peaks, self.seconds = "setup", {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_gib())

    def wrap(self, label: str, fn):  # noqa: ANN001, ANN202 - any callable
        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003
            before, self.phase = self.phase, label
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.peaks[label] = max(self.peaks.get(label, 0.0), rss_gib())
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.phase = before
        return wrapped

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], help="extra dotted overrides (key=value)")
    a = p.parse_args()

    from reinforced.config import load_config
    from reinforced.training import loop, setup

    meter = PhaseMeter()
    steps: list[dict] = []
    real_setup = setup.setup

    def instrumented_setup(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        run = real_setup(*args, **kwargs)
        run.engine.generate = meter.wrap("rollout", run.engine.generate)
        run.rewards.score = meter.wrap("reward", run.rewards.score)
        update = meter.wrap("update", run.updater.update)

        def update_and_record(*u_args, **u_kwargs):  # noqa: ANN002, ANN003, ANN202
            out = update(*u_args, **u_kwargs)
            steps.append({"peaks": dict(meter.peaks), "seconds": dict(meter.seconds)})
            meter.peaks.clear()
            meter.seconds.clear()
            meter.phase = "prepare"
            return out

        run.updater.update = update_and_record
        return run

    loop.setup = instrumented_setup
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"model.name_or_path={a.model}", "data.train=[{task: arithmetic}]", "eval.sets=[]",
            "data.template=think_answer", "rollout.group_size=8", "rollout.max_new_tokens=64",
            "training.num_prompts=4", "training.micro_batch_size=32", f"training.max_steps={a.steps}",
            "training.report_to=[]", "training.autocast=bf16", f"run.output_dir={out}", "run.name=profile",
            "training.samples_per_step=0", *a.set,
        ]
        loop.fit(load_config(None, overrides), show_progress=False)
    meter.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{'step':>4} " + " ".join(f"{k + ' GiB':>12} {k + ' s':>10}" for k in ("rollout", "reward", "update")))
    for i, s in enumerate(steps, 1):
        print(f"{i:>4} " + " ".join(f"{s['peaks'].get(k, 0):>12.2f} {s['seconds'].get(k, 0):>10.2f}"
                                    for k in ("rollout", "reward", "update")))
    print(f"process peak RSS {peak:.2f} GiB; overrides {a.set}")
    with open(Path(__file__).with_name("results_profile_step.jsonl"), "a") as f:
        env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_"))}  # allocator, threads
        f.write(json.dumps({"overrides": a.set, "env": env, "peak_rss_gib": peak, "steps": steps}) + "\n")


if __name__ == "__main__":
    main()
