"""Pipeline configs: a stage's config is the base deep-merged with its overrides, and every config error
names the stage (issue 10)."""

from __future__ import annotations

import pytest

from reinforced.config import ConfigError, load_config, stage_config

TWO = "stages=[{kind: sft, advance: {steps: 3}}, {kind: rl, training: {lr: 0.5}, algorithm: {kl.coef: 0.0}}]"


def test_stage_overrides_merge_into_the_base() -> None:
    cfg = load_config(None, ["training.lr=0.01", "training.num_prompts=3", "rollout.group_size=4", TWO])
    sft, rl = stage_config(cfg, 0), stage_config(cfg, 1)
    assert (sft.training.max_steps, sft.training.lr, sft.training.num_prompts) == (3, 0.01, 3)
    assert (rl.training.lr, rl.training.num_prompts, rl.rollout.group_size) == (0.5, 3, 4)
    assert rl.algorithm.preset == "grpo" and rl.algorithm.overrides == {"kl.coef": 0.0}  # dotted shorthand
    assert sft.stages == () and rl.stages == ()
    assert (sft.run.name, rl.run.name) == ("0-sft", "1-rl")
    assert sft.run.output_dir.endswith("runs/run/stages")


def test_from_stage_names_the_rows_an_earlier_stage_writes() -> None:
    cfg = load_config(None, ["stages=[{kind: generate, name: rs}, {kind: sft, data: {train: [{from_stage: 0}]}}]"])
    source = stage_config(cfg, 1).data.train[0]
    assert source.path is not None and source.path.endswith("stages/0-rs/data.jsonl") and source.name == "rs"


def test_one_stage_config_without_stages_is_unchanged() -> None:
    assert load_config(None, []).stages == ()


@pytest.mark.parametrize(("stages", "message"), [
    ("[{kind: sft}, {kind: rl, training: {lrr: 1}}]", "unknown config key 'stages.1.training.lrr'; did you mean 'lr'"),
    ("[{kind: rl, trainin: {lr: 1}}]", "unknown config key 'stages.0.trainin'; did you mean 'training'"),
    ("[{kind: sft}, {kind: rll}]", "stages.1.kind: unknown stage kind 'rll'"),
    ("[{kind: rl, rollout: {group_size: 1}}]", "stages.0 (rl): rollout.group_size=1"),
    ("[{kind: sft, data: {train: [{from_stage: 0}]}}]", "stages.0.data.train.0.from_stage: 0 must name an earlier"),
    ("[{kind: rl, advance: {steps: 2}, training: {max_steps: 3}}]", "stages.0.advance and stages.0.training.max_steps"),
    ("[{kind: rl, advance: {until: {metric: eval/nope/accuracy, at_least: 0.5, max_steps: 4}}}]",
     "stages.0 (rl): advance.until.metric='eval/nope/accuracy' is not a held-out metric"),
    ("[{kind: rl, advance: {steps: 2, until: {metric: eval/a/accuracy, at_least: 0.5, max_steps: 4}}}]",
     "stages.0.advance"),
    ("[{kind: sft, training: {lr: -1}}]", "bad value for 'stages.0.training.lr'"),
])
def test_a_config_error_names_the_stage(stages: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["eval.sets=[{task: arithmetic}]", f"stages={stages}"])
    assert message in str(err.value)


def test_until_needs_evaluations() -> None:
    until = "{metric: eval/arithmetic/accuracy, at_least: 0.5, max_steps: 4}"
    with pytest.raises(ConfigError, match=r"stages.0 \(rl\): advance.until needs eval.every_n_steps > 0"):
        load_config(None, ["eval.sets=[{task: arithmetic}]", f"stages=[{{kind: rl, advance: {{until: {until}}}}}]"])
    cfg = load_config(None, ["eval.sets=[{task: arithmetic}]", "eval.every_n_steps=2",
                             f"stages=[{{kind: rl, advance: {{until: {until}}}}}]"])
    assert stage_config(cfg, 0).training.max_steps == 4


def test_cli_overrides_reach_a_stage() -> None:
    cfg = load_config("vision_r1", ["stages.2.rollout.group_size=6"])
    assert stage_config(cfg, 2).rollout.group_size == 6
    assert [stage_config(cfg, i).rollout.group_size for i in (1, 3)] == [16, 4]
