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
    run_dir = tmp_path / "cli"
    model = run_dir / "checkpoints" / "step-1" / "model"
    # Overrides after --data are overrides (they used to be read as data paths), and results land on disk.
    out = tmp_path / "explicit.json"
    assert main(["eval", *args, "--data", "gsm8k", f"model.name_or_path={model}", "eval.max_prompts=3",
                 f"--out={out}"]) == 0
    assert "eval/gsm8k/accuracy" in capsys.readouterr().out
    explicit = json.loads(out.read_text())
    assert explicit["model"] == str(model) and explicit["eval"]["max_prompts"] == 3
    assert 0.0 <= explicit["metrics"]["eval/gsm8k/accuracy"] <= 1.0
    # A run directory, or its config.yaml, evaluates the run's latest checkpoint, never the base model.
    for target in (run_dir, run_dir / "config.yaml"):
        assert main(["eval", str(target), "--data", "gsm8k", "eval.max_prompts=3"]) == 0
        assert f"evaluating weights: {model} (run {run_dir}, step 1)" in capsys.readouterr().out
        result = json.loads((run_dir / "eval" / "step-1.json").read_text())
        assert result["model"] == str(model) and result["step"] == 1
        assert result["metrics"] == explicit["metrics"]  # greedy decoding of the same weights


def test_eval_of_a_run_without_checkpoint_is_an_error(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model:\n  name_or_path: tiny-qwen2\n")
    (run_dir / "metrics.jsonl").write_text("")
    assert main(["eval", str(run_dir / "config.yaml"), "--data", "gsm8k"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"run {run_dir} has no checkpoint" in out and "base model" in out


def test_data_inspect_and_filter(tmp_path, capsys):
    assert main(["data", "inspect", "gsm8k"]) == 0
    assert "number" in capsys.readouterr().out
    out = tmp_path / "kept.jsonl"
    # With a band that keeps everything, every prompt is written with its measured pass rate.
    assert main(["data", "filter", "smollm2_arithmetic_grpo", *TINY, "data.train=[{task: arithmetic, limit: 3}]",
                 f"--out={out}", "--k=2", "--low=0", "--high=1", "--keep-extremes"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(0.0 <= r["meta"]["pass_rate"] <= 1.0 for r in rows)


def test_data_text_is_never_read_as_markup(tmp_path, capsys):
    # Square brackets in data are text: "[b]" must not vanish, and a stray "[/b]" must not crash the table.
    data = tmp_path / "brackets.jsonl"
    data.write_text(json.dumps({"id": "q[1]", "question": "Is [b]x[/b] in [0, 1]? See [/b] and [red]here",
                                "answer": "yes", "answer_type": "yes_no"}) + "\n")
    assert main(["data", "inspect", str(data)]) == 0
    out = capsys.readouterr().out
    assert "Is [b]x[/b] in [0, 1]? See [/b] and [red]here" in out
    assert main(["list", "tasks"]) == 0
    assert "[text]" in capsys.readouterr().out  # the modality tag of text tasks, shown in brackets


def test_bad_setups_are_rejected_before_any_work(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n"
                    + json.dumps({"question": "what " * 300, "answer": "2"}) + "\n"
                    + json.dumps({"question": "no gold"}) + "\n")
    base = [*TINY, f"run.output_dir={tmp_path}", "run.name=bad", "training.max_steps=1", "eval.sets=[]",
            "--no-progress"]
    # A row without gold for the accuracy reward: named by file:line, before any model loads.
    assert main(["train", *base, f"data.train=[{{path: {rows}}}]"]) == 2
    assert f"{rows}:3: 'rows-3'" in " ".join(capsys.readouterr().out.split())
    # An over-long prompt (after the chat template, with the model's tokenizer), before any step.
    rows.write_text("\n".join(rows.read_text().splitlines()[:2]) + "\n")
    assert main(["train", *base, f"data.train=[{{path: {rows}}}]", "rollout.max_prompt_tokens=200"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "max_prompt_tokens=200" in out and f"{rows}:2: 'rows-2' is" in out
    assert not (tmp_path / "bad" / "checkpoints").exists() and not (tmp_path / "bad" / "metrics.jsonl").exists()
    # A group-relative advantage with one sample per prompt learns nothing.
    assert main(["train", *base, "rollout.group_size=1"]) == 2
    assert "rollout.group_size=1" in capsys.readouterr().out
