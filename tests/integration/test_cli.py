"""The command line: list, explain, train (with overrides), eval, data inspect/filter, and its errors."""

import json

import pytest

from reinforced.cli import main

TINY = ["model.name_or_path=tiny-qwen2", "data.template=plain", "rollout.group_size=2",
        "rollout.max_new_tokens=4", "training.num_prompts=2", "training.tensorboard=false"]


@pytest.mark.parametrize("what", ["rewards", "algorithms", "tasks", "templates", "samplers", "models", "configs"])
def test_list(capsys, what):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"rewards": "math_answer", "algorithms": "dapo", "tasks": "count_shapes", "templates": "think_answer",
                "samplers": "prioritized", "models": "smollm2-135m-instruct", "configs": "smollm2_arithmetic_grpo"}
    assert expected[what] in out


def test_explain_prints_axes_and_batch_arithmetic(capsys):
    assert main(["explain", "smollm2_arithmetic_grpo", "algorithm.preset=dapo", "algorithm.num_mini_batches=4"]) == 0
    out = capsys.readouterr().out
    assert "eps_high" in out and "0.28" in out
    assert "prompts per step: 4 (x 8 completions = 32 samples)" in out
    assert "samples per mini-batch: 8" in out
    assert "optimiser steps: 4 per rollout batch" in out


def test_unknown_key_is_a_clear_error(capsys):
    assert main(["train", "smollm2_arithmetic_grpo", "training.learning_rate=1"]) == 2
    out = capsys.readouterr().out
    assert "unknown config key 'training.learning_rate'" in out


def test_unknown_preset_suggests(capsys):
    assert main(["explain", "algorithm.preset=grop"]) == 2
    assert "did you mean 'grpo'" in capsys.readouterr().out


def test_missing_model_says_how_to_get_it(capsys, tmp_path):
    assert main(["train", f"run.output_dir={tmp_path}", "model.name_or_path=/no/such/model"]) == 2
    assert "/no/such/model" in capsys.readouterr().out


def test_train_then_eval_the_checkpoint(tmp_path, capsys):
    args = [*TINY, f"run.output_dir={tmp_path}", "run.name=cli", "training.max_steps=1",
            "data.train=[{task: arithmetic}]", "eval.sets=[{task: arithmetic, limit: 2}]"]
    assert main(["train", *args, "--no-progress"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    model = tmp_path / "cli" / "checkpoints" / "step-1" / "model"
    assert main(["eval", *args, f"model.name_or_path={model}", "--data", "gsm8k"]) == 0
    assert "eval/gsm8k/accuracy" in capsys.readouterr().out


def test_data_inspect_and_filter(tmp_path, capsys):
    assert main(["data", "inspect", "gsm8k"]) == 0
    assert "number" in capsys.readouterr().out
    out = tmp_path / "kept.jsonl"
    # With a band that keeps everything, every prompt is written with its measured pass rate.
    assert main(["data", "filter", "smollm2_arithmetic_grpo", *TINY, "data.train=[{task: arithmetic, limit: 3}]",
                 f"--out={out}", "--k=2", "--low=0", "--high=1", "--keep-extremes"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(0.0 <= r["meta"]["pass_rate"] <= 1.0 for r in rows)
