"""Command line: ``reinforced train | sft | eval | explain | list | models | data | report | init``.

    reinforced train tiny_vlm_count_grpo              # a packaged recipe by name (the quickstart)
    reinforced train                                  # config.py's defaults, the same as load_config(None)
    reinforced train configs/x.yaml --overwrite       # delete the run directory first (asks; --yes without a tty)
    reinforced init my_run.yaml                       # a commented starter config
    reinforced train configs/x.yaml algorithm.kl.coef=0.04 training.max_steps=50
    reinforced train configs/x.yaml --resume          # continue from the latest checkpoint
    reinforced sft configs/x.yaml sft.targets=trace   # supervised fine-tuning on answer tokens only
    reinforced eval runs/x                            # the run's latest checkpoint on its eval sets
    reinforced eval configs/x.yaml --data gsm8k model.name_or_path=runs/x/checkpoints/step-20/model
    reinforced explain configs/x.yaml                 # resolved algorithm + derived batch sizes
    reinforced list rewards|algorithms|tasks|templates|samplers|models
    reinforced models pull smollm2-135m-instruct
    reinforced data inspect FILE | data filter CONFIG --out FILE
    reinforced bench claims [NAME ...] [--quick]        # the survey's claims as seeded experiments (claims.md)

The console never reads markup: data text (questions, ids, file names) is printed as given, so square
brackets neither vanish nor crash a table; styles are passed as ``style=`` arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reinforced.config import Config, ConfigError, load_config, packaged_configs, resolve_config_path

console = Console(markup=False)


def resolve_config_arg(path: str) -> Path:
    """A config path or run directory that exists, else a packaged recipe by name (``reinforced list configs``)."""
    p = Path(path)
    return p if p.exists() else resolve_config_path(path)


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are key=value overrides."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def split_eval_args(args: list[str], data: list[str] | None) -> tuple[list[str], list[str] | None]:
    """Give back what ``--data FILE...`` swallowed: ``key=value`` overrides and a config/run written after it.

    argparse hands every word after ``--data`` to it; an entry that is not an existing path and holds '=' is an
    override, and a ``.yaml`` file or run directory is the config when none came before ``--data``.
    """
    if not data:
        return args, data
    kept: list[str] = []
    extra: list[str] = []
    config: list[str] = []
    for item in data:
        path = Path(item)
        if "=" in item and not path.exists():
            extra.append(item)
        elif not config and (not args or "=" in args[0]) and (
                path.suffix in (".yaml", ".yml") or (path / "config.yaml").is_file()):
            config.append(item)
        else:
            kept.append(item)
    return [*config, *args, *extra], kept or None


def load_from_args(args: list[str]) -> Config:
    """No config file: the defaults of config.py, the same as ``load_config(None, overrides)`` in Python."""
    path, overrides = split_config_args(args)
    return load_config(None if path is None else resolve_config_arg(path), overrides)


def cmd_train(ns: argparse.Namespace) -> None:
    from reinforced.algorithms import resolve_spec
    from reinforced.training.loop import fit

    cfg = load_from_args(ns.args)
    if ns.overwrite:
        if ns.resume:
            raise ConfigError("--overwrite deletes the run that --resume would continue; pass one of them")
        clear_run_dir(Path(cfg.run.output_dir) / cfg.run.name, assume_yes=ns.yes)
    if cfg.stages:  # a pipeline: `reinforced explain` prints each stage
        console.print(f"reinforced run {cfg.run.name}: model {cfg.model.name_or_path}, a pipeline of "
                      f"{len(cfg.stages)} stages: {', '.join(s.label for s in cfg.stages)}", style="bold")
    else:
        console.print(f"reinforced run {cfg.run.name}: model {cfg.model.name_or_path}, "
                      f"algorithm {cfg.algorithm.preset}, {cfg.training.max_steps} steps", style="bold")
        spec = resolve_spec(cfg.algorithm.preset, cfg.algorithm.overrides)
        console.print("  " + "; ".join(f"{axis}: {value}" for axis, value in spec.describe()), highlight=False)
    result = fit(cfg, resume=ns.resume, show_progress=not ns.no_progress)
    print_before_after(result.before, result.after)
    console.print(f"run directory: {result.run_dir} (metrics.jsonl, plots/, samples/, checkpoints/)", soft_wrap=True)


def cmd_sft(ns: argparse.Namespace) -> None:
    from reinforced.training.sft import fit_sft

    cfg = load_from_args(ns.args)
    if cfg.stages:
        raise ConfigError("reinforced sft runs one SFT stage; this config has stages: run it with reinforced train")
    if ns.overwrite:
        if ns.resume:
            raise ConfigError("--overwrite deletes the run that --resume would continue; pass one of them")
        clear_run_dir(Path(cfg.run.output_dir) / cfg.run.name, assume_yes=ns.yes)
    console.print(f"reinforced sft {cfg.run.name}: model {cfg.model.name_or_path}, targets {cfg.sft.targets}, "
                  f"{cfg.training.max_steps} steps", style="bold")
    result = fit_sft(cfg, resume=ns.resume, show_progress=not ns.no_progress)
    print_before_after(result.before, result.after)
    console.print(f"run directory: {result.run_dir} (metrics.jsonl, plots/, checkpoints/)", soft_wrap=True)


def clear_run_dir(run_dir: Path, assume_yes: bool) -> None:
    """Delete ``run_dir`` after listing what it holds: asks y/N on a terminal, needs ``--yes`` without one."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    entries = sorted(run_dir.iterdir())
    console.print(f"--overwrite deletes {run_dir} ({_size(run_dir) / 2**20:.1f} MiB):", soft_wrap=True)
    for entry in entries:
        console.print(f"  {entry.name}{'/' if entry.is_dir() else ''}", highlight=False, soft_wrap=True)
    if not assume_yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"--overwrite without a terminal to confirm on: add --yes to delete {run_dir}")
        if input("delete it? [y/N] ").strip().lower() not in ("y", "yes"):
            raise ConfigError(f"not deleted: {run_dir}; choose another run.name or --resume")
    from reinforced.training.setup import lock_run_dir

    lock_run_dir(run_dir).close()  # never delete a directory another process is training in
    shutil.rmtree(run_dir)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def print_before_after(before: dict[str, float], after: dict[str, float]) -> None:
    from reinforced.evaluation.metrics import format_table

    rows = format_table(before, after)
    if not rows:
        return
    table = Table(title="held-out accuracy")
    for col in ("set", "before RL", "after RL"):
        table.add_column(col)
    for key, b, a in rows:
        table.add_row(key.removeprefix("eval/").removesuffix("/accuracy"), b, a)
    console.print(table)


def cmd_eval(ns: argparse.Namespace) -> None:
    from reinforced.evaluation.run import (
        default_results_path,
        eval_target,
        evaluate_config,
        with_eval_data,
        write_results,
    )

    args, data = split_eval_args(ns.args, ns.data)
    path, overrides = split_config_args(args)
    target = eval_target(resolve_config_arg(path) if path is not None else None)
    if target.weights is not None:  # the run's checkpoint first: an explicit model.name_or_path still wins
        overrides = [f"model.name_or_path={target.weights}", *overrides]
    cfg = with_eval_data(load_config(target.config, overrides), data)
    where = f" (run {target.run_dir}, step {target.step})" if target.run_dir is not None else ""
    console.print(f"evaluating weights: {cfg.model.name_or_path}{where}", highlight=False, soft_wrap=True)
    metrics = evaluate_config(cfg)
    table = Table(title=f"evaluation of {cfg.model.name_or_path}")
    table.add_column("metric")
    table.add_column("value")
    for k, v in sorted(metrics.items()):
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    out = write_results(Path(ns.out) if ns.out else default_results_path(cfg, target), cfg, metrics, target)
    console.print(f"results: {out}", highlight=False, soft_wrap=True)


def cmd_explain(ns: argparse.Namespace) -> None:
    from reinforced.algorithms import resolve_spec

    cfg = load_from_args(ns.args)
    if cfg.stages:
        from reinforced.training.pipeline import describe_stages

        console.print(f"pipeline of {len(cfg.stages)} stages (each from the previous one's weights):")
        for line in describe_stages(cfg):
            console.print(line, highlight=False, soft_wrap=True)
        return
    spec = resolve_spec(cfg.algorithm.preset, cfg.algorithm.overrides)
    for axis, value in spec.describe():
        console.print(f"{axis:>22}: {value}")
    p = max(1, round(cfg.training.num_prompts * spec.prompts_per_step_factor))
    n = p * cfg.rollout.group_size
    per_mini = -(-n // spec.num_mini_batches)
    console.print(f"{'prompts per step':>22}: {p} (x {cfg.rollout.group_size} completions = {n} samples)")
    console.print(f"{'samples per mini-batch':>22}: {per_mini}")
    console.print(f"{'micro-batches':>22}: {-(-per_mini // cfg.training.micro_batch_size)} per optimiser step")
    console.print(f"{'optimiser steps':>22}: {spec.num_epochs * spec.num_mini_batches} per rollout batch")


def cmd_list(ns: argparse.Namespace) -> None:
    rows: list[tuple[str, str]]
    if ns.what == "rewards":
        from reinforced.rewards import describe_rewards

        rows = describe_rewards()
    elif ns.what == "algorithms":
        from reinforced.algorithms import PRESETS

        rows = [(n, (f.__doc__ or "").strip().splitlines()[0]) for n, f in PRESETS.items()]
    elif ns.what == "tasks":
        from reinforced.data.tasks import TASKS

        rows = [(n, f"[{t.modality}] {t.description}; rewards: "
                 + ", ".join(r["name"] for r in t.reward_terms)) for n, t in TASKS.items()]
    elif ns.what == "templates":
        from reinforced.data.templates import TEMPLATES

        rows = [(n, (getattr(t, "description", "") or "")) for n, t in TEMPLATES.items()]
    elif ns.what == "samplers":
        from reinforced.data.samplers import SAMPLERS

        rows = [(n, (getattr(f, "__doc__", "") or "").strip().splitlines()[0]) for n, f in SAMPLERS.items()]
    elif ns.what == "models":
        from reinforced.models import BUILTIN_MODELS, PULLABLE

        rows = [(n, "pull once: `reinforced models pull " + n + "`" if n in PULLABLE else "built in")
                for n in BUILTIN_MODELS.names()]
    else:  # configs
        root = packaged_configs()
        rows = [(p.name, (p.read_text().splitlines() or [""])[0].lstrip("# ")) for p in sorted(root.glob("*.yaml"))]
    table = Table(title=ns.what)
    table.add_column("name")
    table.add_column("description")
    for name, desc in rows:
        table.add_row(name, desc)
    console.print(table)


def cmd_models(ns: argparse.Namespace) -> None:
    from reinforced.models.hub import pull

    if ns.action == "pull":
        path = pull(ns.name)
        console.print(f"{ns.name}: ready at {path}")


def cmd_data(ns: argparse.Namespace) -> None:
    if ns.action == "inspect":
        from reinforced.data import inspect_file

        console.print(inspect_file(ns.target, split=ns.split), highlight=False)
    else:
        from reinforced.evaluation.run import filter_config

        cfg = load_from_args([ns.target, *ns.overrides])
        out = filter_config(cfg, out=ns.out, k=ns.k, low=ns.low, high=ns.high, keep_extremes=ns.keep_extremes)
        console.print(f"wrote {out}", soft_wrap=True)


def cmd_export(ns: argparse.Namespace) -> None:
    from reinforced.training.checkpoint import CheckpointError, export_run

    try:
        out = export_run(Path(ns.run_dir), Path(ns.out) if ns.out else None)
    except CheckpointError as err:
        raise ValueError(str(err)) from err
    console.print(f"exported {out} (loads with transformers' from_pretrained)", soft_wrap=True, highlight=False)


def cmd_report(ns: argparse.Namespace) -> None:
    from reinforced.tracking.html_report import write_report
    from reinforced.tracking.report import plot_run

    for path in [write_report(ns.run_dir), *plot_run(ns.run_dir)]:
        console.print(str(path), soft_wrap=True)


def cmd_bench(ns: argparse.Namespace) -> None:
    from reinforced.claims import run_suite

    out = ns.out or ("claims-quick" if ns.quick else "claims")
    command = " ".join(["reinforced bench claims", *ns.names, *(["--quick"] if ns.quick else []),
                        *([f"--out {ns.out}"] if ns.out else []), *([f"--seeds {ns.seeds}"] if ns.seeds else [])])
    seeds = tuple(range(ns.seeds)) if ns.seeds else None
    path = run_suite(ns.names, out=out, quick=ns.quick, seeds=seeds, log=lambda s: console.print(s, soft_wrap=True),
                     command=command)
    console.print(f"table: {path}", soft_wrap=True, highlight=False)


def cmd_init(ns: argparse.Namespace) -> None:
    from importlib import resources

    path = Path(ns.path)
    if path.exists() and not ns.force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    path.write_text((resources.files("reinforced") / "assets" / "starter.yaml").read_text())
    load_config(path)  # the starter must load: a broken template is a bug here, not the user's
    console.print(f"wrote {path}: edit it, then `reinforced train {path}`", soft_wrap=True, highlight=False)


def _add_run_options(p: argparse.ArgumentParser, fn: object) -> None:
    """The options of the commands that train (train, sft)."""
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run directory first (lists it, asks)")
    p.add_argument("--yes", action="store_true", help="with --overwrite: do not ask (needed without a terminal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=fn)


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="bench claims [NAME ...]: the survey's claims as small seeded experiments")
    p.add_argument("suite", choices=["claims"])
    p.add_argument("names", nargs="*", help="claims to run (default: all; see reinforced/claims/definitions.py)")
    p.add_argument("--quick", action="store_true", help="fewer steps (the suite in about 15 minutes)")
    p.add_argument("--out", default=None, help="output folder (default: claims/, or claims-quick/ with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 instead of each claim's own")
    p.set_defaults(fn=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    from reinforced import __version__

    parser = argparse.ArgumentParser(prog="reinforced", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reinforced {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with RL (or run a config's stages)")
    p.add_argument("args", nargs="*", help="[CONFIG] [key=value ...] (no CONFIG: config.py's defaults)")
    _add_run_options(p, cmd_train)
    p = sub.add_parser("sft", help="supervised fine-tuning on answer tokens (the sft stage run alone)")
    p.add_argument("args", nargs="*", help="[CONFIG] [key=value ...]")
    _add_run_options(p, cmd_sft)
    p = sub.add_parser("eval", help="evaluate a model, or a run's latest checkpoint, on held-out sets")
    p.add_argument("args", nargs="*", help="[CONFIG | RUN_DIR] [key=value ...]")
    p.add_argument("--data", nargs="*", default=None, help="JSONL files / set folders / built-in names")
    p.add_argument("--out", default=None, help="results JSON (default: RUN_DIR/eval/step-N.json for a run, "
                                               "else <run.output_dir>/<run.name>/eval/results.json)")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("explain", help="print the resolved algorithm and batch sizes")
    p.add_argument("args", nargs="*", help="[CONFIG] [key=value ...]")
    p.set_defaults(fn=cmd_explain)
    p = sub.add_parser("list", help="list registered components")
    p.add_argument("what", choices=["rewards", "algorithms", "tasks", "templates", "samplers", "models",
                                    "configs"])
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("models", help="get models")
    p.add_argument("action", choices=["pull"])
    p.add_argument("name")
    p.set_defaults(fn=cmd_models)
    p = sub.add_parser("data", help="inspect or filter datasets")
    p.add_argument("action", choices=["inspect", "filter"])
    p.add_argument("target", help="a data file (inspect) or a config (filter)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", default="filtered.jsonl")
    p.add_argument("--split", default="test", help="inspect: which split of a set folder")
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--low", type=float, default=0.0, help="keep pass rate > low")
    p.add_argument("--high", type=float, default=1.0, help="keep pass rate < high")
    p.add_argument("--keep-extremes", action="store_true", help="also keep pass rates of exactly 0 and 1")
    p.set_defaults(fn=cmd_data)
    _add_bench(sub)
    p = sub.add_parser("init", help="write a commented starter config")
    p.add_argument("path", nargs="?", default="reinforced.yaml")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("report", help="write RUN_DIR/report.html (curves, rollout browser) and plots/")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("export", help="copy a run's newest checkpoint model to a plain Hugging Face folder")
    p.add_argument("run_dir")
    p.add_argument("--out", help="target folder (default: RUN_DIR/export)")
    p.set_defaults(fn=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option: `train CONFIG --resume k=v` leaves k=v over.
    if extra and (not hasattr(ns, "args") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        ns.args = [*ns.args, *extra]
    try:
        ns.fn(ns)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        if os.environ.get("REINFORCED_DEBUG"):
            raise
        console.print("error:", str(err), style="red", soft_wrap=True, highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
