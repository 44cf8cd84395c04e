"""Pipelines end to end on the built-in tiny VLM and tiny-qwen2 (issue 10): a resumed pipeline equals an
uninterrupted one across a stage boundary, bitwise on CPU; every checkpoint records its stage; rejection
sampling feeds a later SFT stage; `reinforced sft` runs alone; each shipped recipe runs two steps per stage."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from reinforced.cli import main
from reinforced.config import load_config
from reinforced.training import loop
from reinforced.training.loop import fit

BASE = [
    "model.name_or_path=reinforced-tiny-vlm",
    "data.train=[{task: count_shapes, params: {difficulty: 0.6}}]",
    "data.template=plain",
    "eval.sets=[{task: count_shapes, params: {difficulty: 0.6}, limit: 4}]",
    "eval.max_prompts=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=28",
    "training.num_prompts=2",
    "training.micro_batch_size=8",
    "training.lr=3e-4",
    "training.report_to=[]",
    "training.checkpoint_every=1",
    "run.num_threads=1",
]
SFT_RL = "stages=[{kind: sft, name: cold, sft: {targets: trace}, advance: {steps: 2}}, {kind: rl, advance: {steps: 2}}]"


def config(tmp_path, name, *extra):
    return load_config(None, [*BASE, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def final_weights(run_dir):
    return load_file(str(run_dir / "stages" / "1-rl" / "checkpoints" / "step-2" / "model" / "model.safetensors"))


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["stage_step"], r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    result = fit(config(tmp, "p", SFT_RL), show_progress=False)
    return result


def test_pipeline_layout_and_positions(straight) -> None:
    run_dir = straight.run_dir
    assert straight.steps == 4
    assert [(s, k, g) for s, k, g, _ in losses(run_dir)] == [(0, 1, 1), (0, 2, 2), (1, 1, 3), (1, 2, 4)]
    for stage, name in ((0, "cold"), (1, "rl")):
        for step in (1, 2):
            state = torch.load(run_dir / "stages" / f"{stage}-{name}" / "checkpoints" / f"step-{step}" /
                               "trainer_state.pt", weights_only=False)
            assert state["history"]["pipeline"] == {"stage": stage, "name": name} and state["step"] == step
    record = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert record[1]["before"] == record[0]["after"]  # the RL stage starts from the SFT stage's weights
    rl_config = (run_dir / "stages" / "1-rl" / "config.yaml").read_text()
    assert "stages/0-cold/checkpoints/step-2/model" in rl_config
    exported = load_file(str(run_dir / "export" / "model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in final_weights(run_dir).items())
    with pytest.raises(FileExistsError, match="--resume"):
        fit(load_config(run_dir / "config.yaml"), show_progress=False)


@pytest.mark.parametrize("crash_at", [1, 2], ids=["at-the-boundary", "mid-stage"])
def test_resume_across_a_stage_boundary_is_bitwise(straight, tmp_path, monkeypatch, crash_at) -> None:
    """Crash in the RL stage's step ``crash_at`` (1: before its first checkpoint, 2: after it); resume."""
    collect, calls = loop.collect, []

    def crashing(run, step):
        calls.append(step)
        if step == crash_at:
            raise Crash(f"simulated crash at RL step {step}")
        return collect(run, step)

    cfg = config(tmp_path, "p", SFT_RL)
    monkeypatch.setattr(loop, "collect", crashing)
    with pytest.raises(Crash):
        fit(cfg, show_progress=False)
    monkeypatch.setattr(loop, "collect", collect)
    result = fit(cfg, resume=True, show_progress=False)
    assert result.steps == 4
    expected, resumed = final_weights(straight.run_dir), final_weights(result.run_dir)
    assert all(torch.equal(resumed[k], v) for k, v in expected.items())
    assert losses(result.run_dir) == losses(straight.run_dir)


def test_rejection_sampling_feeds_a_later_sft_stage(tmp_path) -> None:
    stages = ("stages=[{kind: generate, name: rs, generate: {num_prompts: 6, num_samples: 4, "
              "replay: [{task: count_shapes}], replay_targets: trace, replay_share: 0.25}}, "
              "{kind: sft, data: {train: [{from_stage: 0}]}, advance: {steps: 2}}]")
    result = fit(config(tmp_path, "rs", stages), show_progress=False)
    folder = result.run_dir / "stages" / "0-rs"
    stats = json.loads((folder / "metrics.jsonl").read_text())
    rows = [json.loads(x) for x in (folder / "data.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["meta"]["source"] != "replay"]
    assert stats["generate/samples"] == 24 and len(kept) == stats["generate/kept"] >= 1
    assert stats["generate/kept_frac"] == len(kept) / 24 and stats["generate/kept/count_shapes"] == len(kept)
    assert len(rows) - len(kept) == stats["generate/replay"] == round(len(kept) / 3)
    assert all((folder / r["images"][0]).is_file() and r["meta"]["target"] for r in rows)
    sft_rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in sft_rows if "train/loss" in r] == [1, 1]
    assert any("generate/kept_frac" in r and r["stage"] == 0 for r in sft_rows)


def test_reinforced_sft_alone(tmp_path, capsys) -> None:
    args = [*BASE, f"run.output_dir={tmp_path}", "run.name=sft", "sft.targets=trace", "training.max_steps=2",
            "training.report_to=[tensorboard]"]
    assert main(["sft", *args, "--no-progress"]) == 0
    run_dir = tmp_path / "sft"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert list((run_dir / "tb").glob("events.*")) or list(run_dir.rglob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "step-2" / "model").is_dir() and (run_dir / "export").is_dir()
    assert main(["sft", *args, "training.max_steps=3", "--resume", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    capsys.readouterr()
    assert main(["explain", "vision_r1"]) == 0
    out = capsys.readouterr().out
    assert "0. cold_start [sft] 30 steps" in out and "G=16" in out and "max_new_tokens=48" in out


GEN = "generate.num_prompts=4", "generate.num_samples=2"  # rejection sampling / filter stages: 8 samples
EVAL = "eval.max_prompts=4"
RECIPES = {
    "vision_r1": ["eval.sets=[{task: count_shapes, params: {difficulty: 0.6}, limit: 4}]",  # 16 samples per step:
                  *(f"stages.{i}.training.num_prompts={n}" for i, n in ((0, 8), (1, 1), (2, 2), (3, 4)))],
    "r1_zero": ["model.name_or_path=tiny-qwen2", "eval.sets=[{task: arithmetic, limit: 4}]", "eval.every_n_steps=1",
                "rollout.max_new_tokens=24"],
    "lmm_r1": ["training.num_prompts=2"],
    "curr_reft": ["training.num_prompts=4", "stages.3.generate.num_prompts=8", "stages.3.generate.num_samples=4",
                  "stages.4.training.num_prompts=4"],
    "reason_rft": ["stages.0.training.num_prompts=4", "stages.1.training.num_prompts=2"],
    "kimi_k15": ["training.num_prompts=2", "stages.1.data.train=[{task: count_shapes, limit: 8}]"],
    "orz": ["training.num_prompts=2", *GEN],
    "skywork_r1v": ["training.num_prompts=2", *GEN, "stages.1.training.num_prompts=4",
                    "stages.4.training.num_prompts=4"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_two_steps_per_stage(tmp_path, recipe) -> None:
    """Every training stage runs two steps, every stage evaluates all held-out sets (general one included)
    before and after, and the pipeline exports its final model."""
    stages = load_config(recipe).stages
    trains = [i for i, s in enumerate(stages) if s.kind in ("sft", "rl")]
    steps = [f"stages.{i}.advance={{steps: 2}}" for i in trains]
    cfg = load_config(recipe, [*RECIPES[recipe], EVAL, f"run.output_dir={tmp_path}", "run.num_threads=1", *steps])
    assert len(cfg.eval.sets) >= 1 + (recipe not in ("vision_r1", "r1_zero"))  # the task and a general set
    result = fit(cfg, show_progress=False)
    assert result.steps == 2 * len(trains)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["stage_step"]) for r in rows if "train/loss" in r] == [
        (i, s) for i in trains for s in (1, 2)]
    record = json.loads((result.run_dir / "pipeline.json").read_text())["stages"]
    names = [s.name or s.task for s in cfg.eval.sets]
    budget = None
    for d, stage in zip(record, stages, strict=True):
        if d["stage"] in trains:
            assert all(f"eval/{n}/accuracy" in d["before"] and f"eval/{n}/accuracy" in d["after"] for n in names)
        if budget is not None and "max_new_tokens" not in (stage.rollout or {}):  # skywork_r1v's adapted budget
            assert d["max_new_tokens"] == budget
        budget = d["budget"] if d["budget"] is not None else budget
    assert (result.run_dir / "export" / "config.json").is_file()


def test_next_budget_sets_later_stages_and_survives_resume(tmp_path, monkeypatch) -> None:
    """A filter stage's ``next_budget`` turns its correct samples' lengths into the next stages' max_new_tokens
    (stage 2 sets its own and keeps it); a crash in stage 1 and ``--resume`` re-apply the recorded budget."""
    from reinforced.training import generate

    measured = (10, 12, 14, 16, 18, 20, 22, 24, 26, 30)  # p90 by nearest rank: 26; 1.5 x 26 = 39
    real = generate.run_generate
    monkeypatch.setattr(generate, "run_generate", lambda cfg, band: (*real(cfg, band)[:2], measured))
    stages = ("stages=[{kind: filter, generate: {num_prompts: 2, num_samples: 2}, next_budget: {min_tokens: 8, "
              "max_tokens: 64}}, {kind: rl, advance: {steps: 2}}, {kind: rl, rollout: {max_new_tokens: 20}, "
              "advance: {steps: 1}}]")
    collect = loop.collect

    def crashing(run, step):
        if run.cfg.run.name == "1-rl" and step == 2:
            raise Crash("simulated crash in stage 1")
        return collect(run, step)

    cfg = config(tmp_path, "budget", stages)
    monkeypatch.setattr(loop, "collect", crashing)
    with pytest.raises(Crash):
        fit(cfg, show_progress=False)
    monkeypatch.setattr(loop, "collect", collect)
    fit(cfg, resume=True, show_progress=False)
    record = json.loads((tmp_path / "budget" / "pipeline.json").read_text())["stages"]
    assert [(d["budget"], d["max_new_tokens"]) for d in record] == [(39, 28), (None, 39), (None, 20)]
    stage1 = load_config(tmp_path / "budget" / "stages" / "1-rl" / "config.yaml")
    assert stage1.rollout.max_new_tokens == 39
