"""Python API and CLI polish through their public entry points: Trainer, `import reinforced`, the README's
quick paths (run with the tiny random model tiny-qwen2 for one step instead of SmolLM2 for 20), an unguarded
notebook-style script, --version, init, --overwrite."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import reinforced
from reinforced.cli import main
from reinforced.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = {"training.max_steps": 1, "rollout.group_size": 2, "rollout.max_new_tokens": 6, "training.num_prompts": 2,
        "training.micro_batch_size": 4, "eval.max_prompts": 2, "data.template": "plain",
        "training.report_to": [], "run.num_threads": 1}
TINY_ARGS = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker}[^>]*-->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"README block {marker} not found"
    return match.group(1)


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(write(cwd / "script.py", code))], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_import_reinforced_exports_the_public_api():
    for name in ("Trainer", "fit", "load_config", "Config", "register_reward", "FitResult", "RewardResult"):
        assert getattr(reinforced, name) is not None and name in reinforced.__all__
    assert reinforced.fit.__doc__ and "Returns" in reinforced.fit.__doc__
    with pytest.raises(AttributeError, match="public names"):
        reinforced.Trainr  # noqa: B018


def test_notebook_style_script_without_main_guard_trains_and_is_not_rerun(tmp_path):
    """The reward lives in an unguarded __main__; the worker must get it by value, not by re-running the script."""
    code = f"""
with open("starts.txt", "a") as f:
    f.write("start\\n")
from reinforced import Trainer

def has_digit(completions, prompts, answer, **columns):
    return [float(any(ch.isdigit() for ch in c)) for c in completions]

def shorter(completion, prompt):
    return -len(completion) / 100

rows = [{{"question": f"{{a}}+{{a}}?", "answer": str(2 * a), "level": a}} for a in range(6)]
result = Trainer(model="tiny-qwen2", reward_funcs=[has_digit, shorter], train_dataset=rows,
                 eval_dataset=rows[:2], **{TINY!r}).train(show_progress=False)
print("STEPS", result.steps)
"""
    proc = run_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STEPS 1" in proc.stdout
    assert (tmp_path / "starts.txt").read_text() == "start\n"  # the reward worker never ran the script
    step = [m for m in metrics(tmp_path / "runs" / "run") if "reward/shorter" in m][0]
    assert step["reward/errors"] == 0.0 and step["reward/shorter"] < 0  # both callables scored in the worker
    row = json.loads((tmp_path / "runs" / "run" / "data" / "train.jsonl").read_text().splitlines()[0])
    assert row == {"question": "0+0?", "answer": "0", "meta": {"level": 0}}


def test_readme_python_quick_path(tmp_path):
    code = readme_block("quick-path-python").replace('"smollm2-135m-instruct"', '"tiny-qwen2"')
    code = code.replace('"training.max_steps": 20', ", ".join(f"{k!r}: {v!r}" for k, v in TINY.items()))
    assert code.count("\n") <= 16 and "tiny-qwen2" in code and "training.max_steps': 1" in code
    proc = run_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(tmp_path / "runs" / "units" / "config.yaml")
    assert [t.name for t in cfg.rewards.terms] == ["exact_units", "format"] and cfg.rewards.terms[0].accuracy
    assert "eval/eval/accuracy" in metrics(tmp_path / "runs" / "units")[0]


def test_readme_yaml_quick_path(tmp_path, monkeypatch):
    python = readme_block("quick-path-python")
    reward = python[python.index("def exact_units"):python.index("rows = ")]
    write(tmp_path / "my_rewards.py", reward)
    rows = [{"question": f"{a} km and {a} km?", "answer": str(2 * a), "meta": {"unit": "km"}} for a in range(4)]
    write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    yaml_text = readme_block("quick-path-yaml")
    assert yaml_text.count("\n") <= 6
    write(tmp_path / "my_run.yaml", yaml_text)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "my_run.yaml", "model.name_or_path=tiny-qwen2", *TINY_ARGS, "--no-progress"]) == 0
    step = [m for m in metrics(tmp_path / "runs" / "units_yaml") if "reward/errors" in m][0]
    name = f"{(tmp_path / 'my_rewards.py').resolve()}:exact_units"
    assert step["reward/errors"] == 0.0 and f"reward/{name}" in step  # scored, with the unit column from meta
    assert load_config(tmp_path / "runs" / "units_yaml" / "config.yaml").rewards.terms[0].name == name


def test_cli_names_a_missing_reward_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "rewards.terms=[{name: nope.py:f, accuracy: true}]"]) == 2
    assert "reward file not found: nope.py" in capsys.readouterr().out


def test_trainer_overrides_in_both_forms_and_clashes_are_errors(tmp_path):
    t = reinforced.Trainer(model="tiny-qwen2", reward_funcs=["math_answer", {"name": "format", "weight": 0.1}],
                           algorithm="dapo", training__lr=3e-4, **{"run.output_dir": str(tmp_path)})
    assert (t.config.algorithm.preset, t.config.training.lr) == ("dapo", 3e-4)
    assert [(r.name, r.accuracy, r.weight) for r in t.config.rewards.terms] == [("math_answer", True, 1.0),
                                                                                  ("format", False, 0.1)]
    with pytest.raises(reinforced.ConfigError, match="unknown config key 'training.learning_rate'"):
        reinforced.Trainer(**{"training.learning_rate": 1.0})


def test_packaged_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/smollm2_arithmetic_grpo.yaml") == load_config("smollm2_arithmetic_grpo")
    assert load_config("smollm2_arithmetic_grpo").run.name == "smollm2_arithmetic_grpo"


def test_version_and_init(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"reinforced {reinforced.__version__}"
    path = tmp_path / "start.yaml"
    assert main(["init", str(path)]) == 0
    assert load_config(path).run.name == "my_run" and "# Your own reward" in path.read_text()
    assert main(["init", str(path)]) == 2  # never overwrites without --force


def test_overwrite_lists_asks_and_needs_yes_without_a_terminal(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    args = ["train", f"run.output_dir={tmp_path}", "run.name=r", "model.name_or_path=/no/such/model", "--overwrite"]
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(args) == 2
    out = capsys.readouterr().out
    assert "checkpoints/" in out and "metrics.jsonl" in out and "add --yes" in out and run_dir.exists()
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(args) == 2 and run_dir.exists()
    assert main([*args, "--yes"]) == 2  # deleted, then the missing model stops the run
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    assert main([*args[:-1], "--overwrite", "--resume", "--yes"]) == 2
