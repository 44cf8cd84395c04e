"""Pipeline configs: a stage's config is the base deep-merged with its overrides, and every config error
names the stage (issue 10)."""

from __future__ import annotations

import pytest

from reinforced.config import BudgetRule, ConfigError, load_config, stage_config
from reinforced.training.pipeline import adaptive_budget, with_budget

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
    ("[{kind: sft, next_budget: {}}]", "stages.0.next_budget: a sft stage measures no sample lengths; put it on a "
     "stage that samples (filter, generate)"),
    ("[{kind: filter, next_budget: {min_tokens: 9, max_tokens: 8}}]", "min_tokens=9 exceeds max_tokens=8"),
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


@pytest.mark.parametrize(("lengths", "rule", "budget"), [
    ([10, 12, 14, 16, 18, 20, 22, 24, 26, 30], {}, 39),          # p90 by nearest rank = 26; 1.5 x 26 = 39
    ([10, 12, 14, 16, 18, 20, 22, 24, 26, 30], {"quantile": 1.0, "factor": 2.0}, 60),
    ([7], {"quantile": 0.5, "factor": 1.0}, 8),                  # raised to min_tokens
    ([900, 1000], {"max_tokens": 512}, 512),                     # capped at max_tokens
    ([], {"max_tokens": 96}, 96),                                # nothing correct: no evidence to cut the budget
    ([5, 5, 5, 100], {"quantile": 0.75, "factor": 1.0, "min_tokens": 1}, 5),  # an outlier above the quantile
])
def test_adaptive_budget(lengths, rule, budget) -> None:
    assert adaptive_budget(lengths, BudgetRule(**rule)) == budget
    assert adaptive_budget(list(reversed(lengths)), BudgetRule(**rule)) == budget  # order-free


def test_a_budget_reaches_only_stages_that_do_not_set_their_own() -> None:
    cfg = load_config(None, ["rollout.max_new_tokens=48", "stages=[{kind: filter, next_budget: {}}, {kind: rl}, "
                             "{kind: rl, rollout: {max_new_tokens: 20}}]"])
    assert [with_budget(cfg, i, stage_config(cfg, i), 39).rollout.max_new_tokens for i in (1, 2)] == [39, 20]
    assert with_budget(cfg, 1, stage_config(cfg, 1), None).rollout.max_new_tokens == 48


def test_stage_data_paths_resolve_beside_the_config(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "recipe"
    (folder / "data").mkdir(parents=True)
    for name in ("train.jsonl", "held.jsonl", "general.jsonl"):
        (folder / "data" / name).write_text('{"question": "1+1?", "answer": "2"}\n')
    (folder / "r.yaml").write_text(
        "stages:\n"
        "  - {kind: generate, generate: {replay: [{path: data/general.jsonl}]}}\n"
        "  - {kind: rl, data: {train: [{path: data/train.jsonl}]}, eval: {sets: [{path: data/held.jsonl}]}}\n")
    monkeypatch.chdir(tmp_path)  # the paths exist only beside the config, not in the working directory
    cfg = load_config(folder / "r.yaml")
    rl, gen = stage_config(cfg, 1), stage_config(cfg, 0)
    assert rl.data.train[0].path == str((folder / "data" / "train.jsonl").resolve())
    assert rl.eval.sets[0].path == str((folder / "data" / "held.jsonl").resolve())
    assert gen.generate.replay[0].path == str((folder / "data" / "general.jsonl").resolve())
