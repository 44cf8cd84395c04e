"""Pipelines: several training stages in one config and one run directory (issue 10; the survey's section 3).

    stages:                                          # each stage: base config deep-merged with its overrides
      - {kind: sft, sft: {targets: trace}, advance: {steps: 40}}            # cold start on reasoning traces
      - {kind: rl, rollout: {group_size: 16, max_new_tokens: 28}, advance: {steps: 10}}
      - {kind: generate, generate: {num_samples: 8}}                        # rejection sampling
      - {kind: sft, data: {train: [{from_stage: 2}]}}                       # ... trained on what passed

R1-style multimodal recipes are staged: Vision-R1 and Reason-RFT run a cold-start SFT before GRPO, LMM-R1
text-only RL before multimodal RL, Curr-ReFT a curriculum then rejection-sampled self-improvement, Skywork
R1V iterations of SFT on what is still wrong. A stage is a registry entry (``STAGES``: ``sft``, ``rl``,
``generate``, ``filter``); this runner never branches on a stage's kind.

Each stage runs in its own folder ``<run>/stages/<i>-<name>/`` (its config.yaml, checkpoints, samples,
metrics, written data) and starts from the previous training stage's final weights, read from that stage's
final checkpoint (``model/``: safetensors, so the weights are bit-identical to those in memory); the same
path serves a fresh run and ``--resume``, which makes a resumed pipeline equal an uninterrupted one by
construction. Every checkpoint records its position (``trainer_state.pt``: ``history.pipeline`` =
``{stage, name}`` and ``step``, the stage's step). ``<run>/pipeline.json`` lists the finished stages; on
``--resume`` they are skipped and the first unfinished one continues from its newest checkpoint.
``<run>/metrics.jsonl`` holds every stage's rows with ``stage``, ``stage_name`` and ``stage_step`` fields
and ``step`` counted across the pipeline; it is rewritten as each stage ends (a stage's live metrics and
trackers are in its own folder). ``<run>/export/`` is the final model.

A stage that samples (``generate``, ``filter``) may carry ``next_budget``: Skywork R1V's adaptive thinking
budget (arXiv 2504.05599) as a rule on measurements, not on stage names: every later stage that does not set
``rollout.max_new_tokens`` itself gets ``clamp(ceil(factor * q), min_tokens, max_tokens)``, q a quantile of
the token lengths of the stage's correct samples (``adaptive_budget``). The budget is recorded in
``pipeline.json`` so ``--resume`` applies the same one.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reinforced.config import BudgetRule, Config, ConfigError, StageConfig, stage_config, stage_dir
from reinforced.registry import Registry
from reinforced.training import checkpoint as ckpt
from reinforced.training.loop import FitResult


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets: its resolved config (weights to start from already in ``cfg.model``)."""

    index: int
    stage: StageConfig
    cfg: Config
    resume: bool
    show_progress: bool

    @property
    def position(self) -> dict[str, Any]:
        return {"stage": self.index, "name": self.stage.label}

    @property
    def until(self) -> Callable[[dict[str, float]], bool] | None:
        """The advance rule ``until`` as a test on a step's metrics (None: run all the stage's steps)."""
        rule = self.stage.advance.until if self.stage.advance is not None else None
        if rule is None:
            return None
        return lambda stats: stats.get(rule.metric, -math.inf) >= rule.at_least


@dataclass
class StageResult:
    """``weights``: the folder the next stage starts from (None: unchanged); ``rows``: its metrics rows."""

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    weights: Path | None = None
    data: Path | None = None
    correct_lengths: tuple[int, ...] = ()
    """Token lengths of the stage's correct samples (stages that sample), for ``next_budget``."""


@dataclass(frozen=True)
class StageKind:
    run: Callable[[StageContext], StageResult]
    summary: Callable[[Config], str]
    """One line for ``reinforced explain``: what the stage does with its resolved config."""
    measures_lengths: bool = False
    """The stage reports its correct samples' lengths (it may carry ``next_budget``)."""


STAGES: Registry[StageKind] = Registry("stage kind")


def _final_weights(cfg: Config) -> Path:
    latest = ckpt.latest_checkpoint(Path(cfg.run.output_dir) / cfg.run.name)
    assert latest is not None  # every training stage checkpoints its last step
    return latest / "model"


def _run_rl(ctx: StageContext) -> StageResult:
    from reinforced.training.loop import stop_requests, train
    from reinforced.training.setup import setup

    run = setup(ctx.cfg, ctx.resume)
    run.history["pipeline"] = ctx.position
    try:
        with stop_requests() as stop:
            result = train(run, stop, ctx.show_progress, until=ctx.until)
    finally:
        run.rewards.close()
        run.release()
    return StageResult(result.before, result.after, result.steps, weights=_final_weights(ctx.cfg))


def _run_sft(ctx: StageContext) -> StageResult:
    from reinforced.training.sft import fit_sft

    result = fit_sft(ctx.cfg, ctx.resume, ctx.show_progress, until=ctx.until, position=ctx.position)
    return StageResult(result.before, result.after, result.steps, weights=_final_weights(ctx.cfg))


def _run_generate(ctx: StageContext) -> StageResult:
    from reinforced.training.generate import run_generate

    path, stats, lengths = run_generate(ctx.cfg, band=False)
    return StageResult(after=stats, data=path, correct_lengths=lengths)


def _run_filter(ctx: StageContext) -> StageResult:
    from reinforced.training.generate import run_generate

    path, stats, lengths = run_generate(ctx.cfg, band=True)
    return StageResult(after=stats, data=path, correct_lengths=lengths)


def _rl_summary(c: Config) -> str:
    lengths = "".join(f", {n} from step {s}" for s, n in c.rollout.length_schedule)
    return (f"{c.algorithm.preset} {dict(c.algorithm.overrides) or ''}, G={c.rollout.group_size}, "
            f"{c.training.num_prompts} prompts/step, max_new_tokens={c.rollout.max_new_tokens}{lengths}, "
            f"lr={c.training.lr:g}")


STAGES.add("rl", StageKind(_run_rl, _rl_summary))
STAGES.add("sft", StageKind(_run_sft, lambda c: (
    f"targets: {c.sft.targets}, {c.training.num_prompts} rows/step, lr={c.training.lr:g}")))
STAGES.add("generate", StageKind(_run_generate, lambda c: (
    f"{c.generate.num_prompts} prompts x K={c.generate.num_samples}, keep <= {c.generate.keep_per_prompt} "
    f"correct{' well-formed' if c.generate.well_formed else ''} ({c.generate.order} first), replay share "
    f"{c.generate.replay_share:g}"), measures_lengths=True))
STAGES.add("filter", StageKind(_run_filter, lambda c: (
    f"{c.generate.num_prompts} prompts x K={c.generate.num_samples}, keep {c.generate.pass_band[0]:g} < pass "
    f"rate < {c.generate.pass_band[1]:g}"), measures_lengths=True))


def resolve_stages(cfg: Config) -> list[Config]:
    """Every stage's config (errors name the stage: ``stages.1.training.lrr: unknown key``)."""
    for i, stage in enumerate(cfg.stages):
        if stage.kind not in STAGES.names():
            raise ConfigError(f"stages.{i}.kind: unknown stage kind {stage.kind!r}; valid: "
                              f"{', '.join(STAGES.names())}")
        if stage.next_budget is not None and not STAGES[stage.kind].measures_lengths:
            raise ConfigError(f"stages.{i}.next_budget: a {stage.kind} stage measures no sample lengths; put it on "
                              f"a stage that samples ({', '.join(n for n in STAGES.names() if STAGES[n].measures_lengths)})")
    return [stage_config(cfg, i) for i in range(len(cfg.stages))]


def adaptive_budget(lengths: Sequence[int], rule: BudgetRule) -> int:
    """``clamp(ceil(factor * q), min_tokens, max_tokens)`` with q the ``quantile`` of ``lengths`` (the nearest
    rank, so q is a measured length); ``max_tokens`` when nothing was correct (no evidence to cut the budget).

    >>> adaptive_budget(list(range(1, 11)), BudgetRule(quantile=0.9, factor=1.5, min_tokens=4, max_tokens=64))
    14
    >>> adaptive_budget([], BudgetRule(max_tokens=64)), adaptive_budget([100], BudgetRule(max_tokens=64))
    (64, 64)
    """
    if not lengths:
        return rule.max_tokens
    ordered = sorted(lengths)
    q = ordered[max(0, math.ceil(rule.quantile * len(ordered)) - 1)]
    return min(rule.max_tokens, max(rule.min_tokens, math.ceil(rule.factor * q)))


def with_budget(cfg: Config, index: int, stage_cfg: Config, budget: int | None) -> Config:
    """Stage ``index``'s config with ``rollout.max_new_tokens = budget`` unless the stage sets it itself."""
    own = cfg.stages[index].rollout or {}
    if budget is None or "max_new_tokens" in own:
        return stage_cfg
    return stage_cfg.model_copy(update={"rollout": stage_cfg.rollout.model_copy(update={"max_new_tokens": budget})})


def describe_stages(cfg: Config) -> list[str]:
    """One line per stage for ``reinforced explain``."""
    lines = []
    for i, (stage, c) in enumerate(zip(cfg.stages, resolve_stages(cfg), strict=True)):
        rule = stage.advance
        advance = (f"until {rule.until.metric} >= {rule.until.at_least:g} (at most {rule.until.max_steps} steps)"
                   if rule is not None and rule.until is not None else f"{c.training.max_steps} steps")
        if stage.kind in ("generate", "filter"):
            advance = "once"
        sources = ", ".join(s.name or s.task or s.path or "?" for s in c.data.train)
        lines.append(f"{i}. {stage.label} [{stage.kind}] {advance}; data: {sources}; template {c.data.template}")
        if stage.next_budget is not None:
            b = stage.next_budget
            lines.append(f"     then later stages' max_new_tokens = clamp({b.factor:g} x p{round(100 * b.quantile)} of "
                         f"correct lengths, {b.min_tokens}, {b.max_tokens})")
        lines.append(f"     {STAGES[stage.kind].summary(c)}")
    return lines


PIPELINE_FILE = "pipeline.json"


def run_pipeline(cfg: Config, resume: bool = False, show_progress: bool = True) -> FitResult:
    """Run ``cfg.stages`` in order (the engine of ``reinforced train`` when a config has stages).

    Returns ``FitResult`` with ``before`` the first stage's held-out metrics before training, ``after`` the last
    training stage's after, ``steps`` the training steps of all stages.
    """
    from reinforced.training.setup import lock_run_dir

    configs = resolve_stages(cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        done = _finished_stages(run_dir, cfg, resume)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        weights = next((Path(d["weights"]) for d in reversed(done) if d["weights"]), None)
        budget = next((d["budget"] for d in reversed(done) if d.get("budget") is not None), None)
        for i in range(len(done), len(configs)):
            stage_cfg = with_budget(cfg, i, configs[i], budget)
            if weights is not None:
                stage_cfg = stage_cfg.model_copy(update={"model": stage_cfg.model.model_copy(
                    update={"name_or_path": str(weights)})})
            _check_inputs(cfg, i, stage_cfg)
            resume_stage = resume and ckpt.latest_checkpoint(stage_dir(cfg, i)) is not None
            try:
                result = STAGES[cfg.stages[i].kind].run(StageContext(i, cfg.stages[i], stage_cfg, resume_stage,
                                                                     show_progress))
            except ValueError as err:  # bad data or settings met at run time: say which stage
                raise ConfigError(f"stages.{i} ({cfg.stages[i].label}): {err}") from err
            weights = result.weights or weights
            rule = cfg.stages[i].next_budget
            if rule is not None:
                budget = adaptive_budget(result.correct_lengths, rule)
            done.append({"stage": i, "name": cfg.stages[i].label, "kind": cfg.stages[i].kind,
                         "steps": result.steps, "before": result.before, "after": result.after,
                         "weights": None if result.weights is None else str(result.weights),
                         "data": None if result.data is None else str(result.data),
                         "budget": budget if rule is not None else None,
                         "max_new_tokens": stage_cfg.rollout.max_new_tokens})
            _write_json(run_dir / PIPELINE_FILE, {"stages": done})
            write_metrics(run_dir, cfg, done)
        if weights is not None:
            _export(weights, run_dir / "export")
    finally:
        lock.close()
    trained = [d for d in done if d["weights"]]
    return FitResult(run_dir, trained[0]["before"] if trained else {}, trained[-1]["after"] if trained else {},
                     sum(d["steps"] for d in done))


def _finished_stages(run_dir: Path, cfg: Config, resume: bool) -> list[dict[str, Any]]:
    """The stages ``pipeline.json`` lists as finished (``--resume``); without resume, a started run is an error."""
    path = run_dir / PIPELINE_FILE
    started = path.exists() or any(ckpt.latest_checkpoint(stage_dir(cfg, i)) for i in range(len(cfg.stages)))
    if not resume:
        if started:
            raise FileExistsError(f"run directory {run_dir} already holds a pipeline run: pass --resume to "
                                  "continue it, or choose another run.name")
        return []
    done = json.loads(path.read_text())["stages"] if path.exists() else []
    for d in done:
        if d["stage"] >= len(cfg.stages) or d["kind"] != cfg.stages[d["stage"]].kind:
            raise ConfigError(f"--resume: {path} records stage {d['stage']} ({d['kind']}), which this config's "
                              "stages do not have at that position; resume with the run's own config.yaml")
    return done


def _check_inputs(cfg: Config, index: int, stage_cfg: Config) -> None:
    """A ``from_stage`` source must point at rows an earlier stage wrote (a training stage writes none)."""
    for j, source in enumerate(stage_cfg.data.train):
        if source.path is not None and Path(source.path).parent.parent == stage_dir(cfg, index).parent:
            if not Path(source.path).is_file():
                raise ConfigError(f"stages.{index}.data.train.{j}.from_stage: stage "
                                  f"{Path(source.path).parent.name} wrote no rows ({source.path} is missing); "
                                  "name a generate or filter stage")


def write_metrics(run_dir: Path, cfg: Config, done: list[dict[str, Any]]) -> None:
    """``<run>/metrics.jsonl``: every finished stage's rows, tagged with the stage, steps counted across stages."""
    rows, offset = [], 0
    for d in done:
        source = stage_dir(cfg, d["stage"]) / "metrics.jsonl"
        stage_rows = [json.loads(x) for x in source.read_text().splitlines() if x.strip()] if source.exists() else [
            {"step": 0, **{f"{d['kind']}/{k}": v for k, v in d["after"].items()}}]
        for r in stage_rows:
            rows.append({**r, "step": offset + r["step"], "stage": d["stage"], "stage_name": d["name"],
                         "stage_step": r["step"]})
        offset += d["steps"]
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(run_dir / "metrics.jsonl")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _export(weights: Path, out: Path) -> None:
    """``<run>/export``: the final stage's model folder (a LoRA adapter merged into its base)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from reinforced.models import lora

    if lora.is_adapter_folder(weights):
        lora.export_merged(weights, tmp)
    else:
        shutil.copytree(weights, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
