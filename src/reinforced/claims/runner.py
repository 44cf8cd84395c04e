"""Run a claim's arms over its seeds, one run at a time, resumably, and measure each run.

Layout under the output folder (default ``claims/``)::

    claims/<name>/runs/<arm>/seed-<s>/    an ordinary run directory (config.yaml, metrics.jsonl, ...)
    claims/<name>/runs/<arm>/seed-<s>/claim_run.json   written when the run finished: it is never re-run
    claims/<name>/metrics.json            every run's measures and the effects (report.py)
    claims/<name>/<name>.png              mean and spread over seeds per arm and measure (report.py)
    claims/claims.md                      the table over every claim in the folder (report.py)

A run that stopped part-way continues from its newest checkpoint (``fit(resume=True)``); one that stopped
before its first checkpoint starts again. Runs go one at a time: two cores hold one tiny-model run well, and
parallel runs would make each run's wall time (reported) meaningless.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reinforced.claims.spec import Arm, Claim
from reinforced.config import Config, load_config

DONE = "claim_run.json"


@dataclass(frozen=True)
class RunRecord:
    """One finished run of one arm and seed: its measures and the metric rows they came from."""

    arm: str
    seed: int
    run_dir: Path
    measures: dict[str, float | None]
    rows: list[dict[str, Any]]
    wall_s: float


def arm_overrides(claim: Claim, arm: Arm, quick: bool) -> list[str]:
    """The overrides of one arm, in order: claim base, arm, claim quick, arm quick (later ones win: ``--quick``
    shortens what an arm set, e.g. the steps of the stage list it replaced)."""
    return [*claim.base, *arm.overrides, *(claim.quick if quick else ()), *(arm.quick if quick else ())]


def arm_config(claim: Claim, arm: Arm, seed: int, out: Path, quick: bool) -> Config:
    """The config of ``arm`` at ``seed``: its run directory is ``<out>/<claim>/runs/<arm>/seed-<seed>``."""
    run_keys = [f"run.output_dir={out / claim.name / 'runs' / arm.name}", f"run.name=seed-{seed}",
                f"run.seed={seed}", "training.report_to=[]"]
    return load_config(claim.config, [*arm_overrides(claim, arm, quick), *run_keys])


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_one(claim: Claim, arm: Arm, seed: int, out: Path, quick: bool,
            fit: Callable[..., Any] | None = None, log: Callable[[str], None] = print) -> RunRecord:
    """Run (or reuse) one arm at one seed and measure it; ``fit`` defaults to ``reinforced.training.loop.fit``."""
    cfg = arm_config(claim, arm, seed, out, quick)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    marker = run_dir / DONE
    if marker.exists():
        done = json.loads(marker.read_text())
        if bool(done.get("quick")) != quick:
            raise ValueError(f"{run_dir} holds a {'--quick' if done.get('quick') else 'full'} run; write "
                             f"{'full' if not quick else '--quick'} runs to another folder (--out)")
        wall_s = float(done["wall_s"])
        log(f"  {claim.name} / {arm.name} / seed {seed}: finished before, reused ({run_dir})")
    else:
        if fit is None:
            from reinforced.training.loop import fit  # local: importing the trainer loads torch and models
        from reinforced.training.checkpoint import latest_checkpoint

        resume = run_dir.exists() and (latest_checkpoint(run_dir) is not None
                                       or (run_dir / "pipeline.json").exists())  # a pipeline's finished stages
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to continue from
        log(f"  {claim.name} / {arm.name} / seed {seed}: {'resuming' if resume else 'running'} ({run_dir})")
        start = time.perf_counter()
        fit(cfg, resume=resume, show_progress=False)
        wall_s = time.perf_counter() - start
        marker.write_text(json.dumps({"claim": claim.name, "arm": arm.name, "seed": seed, "quick": quick,
                                      "overrides": arm_overrides(claim, arm, quick), "wall_s": wall_s}, indent=1))
    rows = read_rows(run_dir)
    return RunRecord(arm.name, seed, run_dir, {m.name: m.of(rows) for m in claim.measures}, rows, wall_s)


def run_claim(claim: Claim, out: Path, quick: bool = False, seeds: Sequence[int] | None = None,
              fit: Callable[..., Any] | None = None, log: Callable[[str], None] = print) -> list[RunRecord]:
    """Every arm of ``claim`` at every seed (seed-major: a stopped suite has compared arms at the same seeds)."""
    seeds = tuple(seeds) if seeds is not None else (claim.quick_seeds if quick else claim.seeds)
    if not seeds:
        raise ValueError(f"claim {claim.name!r}: no seeds to run")
    return [run_one(claim, arm, seed, out, quick, fit=fit, log=log) for seed in seeds for arm in claim.arms]


def finished(claim: Claim, out: Path, quick: bool) -> list[RunRecord]:
    """The runs of ``claim`` under ``out`` that finished (with the same ``quick``), measured; nothing is run."""
    records = []
    for arm in claim.arms:
        for marker in sorted((out / claim.name / "runs" / arm.name).glob(f"seed-*/{DONE}")):
            done = json.loads(marker.read_text())
            if bool(done.get("quick")) == quick:
                rows = read_rows(marker.parent)
                records.append(RunRecord(arm.name, int(done["seed"]), marker.parent,
                                         {m.name: m.of(rows) for m in claim.measures}, rows, float(done["wall_s"])))
    return records


def select(claims: Iterable[Claim], names: Sequence[str]) -> list[Claim]:
    """The claims named (all when ``names`` is empty); an unknown name is an error listing the valid ones."""
    claims = list(claims)
    if not names:
        return claims
    by_name = {c.name: c for c in claims}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown claim {', '.join(map(repr, unknown))}; valid: {', '.join(by_name)}")
    return [by_name[n] for n in names]
