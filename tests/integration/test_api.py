"""Python API and CLI polish through their public entry points: Trainer, `import reinforced`, the README's
quick paths (run with the tiny random model tiny-qwen2 for one step instead of SmolLM2 for 20), an unguarded
notebook-style script, --version, init, --overwrite; Trainer with Hugging Face datasets holding PIL images (the
tiny VLM), a loaded model, rewards restored by `reinforced eval RUN` in a new process, data paths beside the
config, batch rewards with context parameters and without gold."""

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
    [data_file] = (tmp_path / "runs" / "run" / "data").glob("train-*.jsonl")
    row = json.loads(data_file.read_text().splitlines()[0])
    assert row == {"id": "train-1", "answer": "0", "answer_type": "text", "question": "0+0?", "meta": {"level": 0}}


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


def shade_rows(n: int) -> dict:
    """TRL-style rows: a conversational prompt with a bare image item, the PIL image in ``images``, gold in
    ``solution``, and an extra column ``level``."""
    import numpy as np
    from PIL import Image

    return {"prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"shade {i}?"}]}]
                       for i in range(n)],
            "images": [[Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8))] for i in range(n)],
            "solution": [str(i) for i in range(n)], "level": list(range(n))}


def level(completions, prompts, level, num_tokens, **columns):
    """A batch reward reading the extra column and a context parameter (one entry per completion)."""
    assert len(level) == len(num_tokens) == len(completions) and all(isinstance(n, int) for n in num_tokens)
    return [float(lv) for lv in level]


def test_trainer_takes_datasets_with_pil_images_and_eval_in_a_new_process_restores_the_reward(tmp_path):
    """A datasets.Dataset with PIL images (train) and a DatasetDict's test split (eval) on the tiny VLM, 1 step;
    the run's data is what the loaders read back; `reinforced eval RUN` in a new process restores the callable."""
    datasets = pytest.importorskip("datasets")  # installed by `make test` (the dev extra)
    import numpy as np
    from PIL import Image

    from reinforced.data import prompts_from_dataset

    ds = datasets.Dataset.from_dict(shade_rows(4))
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2, 3])})
    args = {"model": "reinforced-tiny-vlm", "reward_funcs": ["math_answer", level], "train_dataset": ds,
            "eval_dataset": dd, "run.output_dir": str(tmp_path / "runs"), **TINY}
    trainer = reinforced.Trainer(**args)
    result = trainer.train(show_progress=False)
    run_dir = tmp_path / "runs" / "run"
    step = [m for m in metrics(run_dir) if "reward/errors" in m][0]
    assert result.steps == 1 and step["reward/errors"] == 0.0 and step["reward/level"] == 1.5  # levels 0..3
    saved = load_config(run_dir / "config.yaml")
    train_file, eval_file = Path(saved.data.train[0].path), Path(saved.eval.sets[0].path)
    assert train_file.parent == eval_file.parent == (run_dir / "data").resolve()
    read = prompts_from_dataset(str(train_file))  # the file loaders, as for YAML
    assert [(p.prompt_id, p.question, p.answer, p.metadata) for p in read] == [
        (f"train-{i + 1}", f"<image>shade {i}?", str(i), {"level": i}) for i in range(4)]
    for i, p in enumerate(read):  # PNG beside the rows: the pixels of the PIL image given
        assert np.array_equal(np.asarray(Image.open(p.images[0])), np.asarray(ds[i]["images"][0]))
    assert [p.answer for p in prompts_from_dataset(str(eval_file))] == ["2", "3"]  # the DatasetDict's test split
    # the same data as an IterableDataset or as dict rows: the same file (content-addressed, resume-safe)
    for same in (ds.to_iterable_dataset(), [dict(r) for r in ds]):
        again = reinforced.Trainer(**{**args, "train_dataset": same}).config.data.train[0].path
        assert again == str(train_file)
    with pytest.raises(reinforced.ConfigError, match=r"no split 'validation' \(available: train, test\)"):
        reinforced.Trainer(**{**args, "eval_split": "validation"})

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "reinforced", "eval", str(run_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"reward 'level': the Python function saved by Trainer in {run_dir / 'rewards' / 'level.pkl'}" in (
        proc.stdout + proc.stderr)
    (run_dir / "rewards" / "level.pkl").unlink()
    proc = subprocess.run([sys.executable, "-m", "reinforced", "eval", str(run_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown reward 'level'" in proc.stdout + proc.stderr
    assert "name the term 'my_rewards.py:level'" in proc.stdout + proc.stderr


def test_trainer_with_a_loaded_model_records_its_source_and_rows_without_gold(tmp_path):
    """model=<loaded transformers model> + processing_class, 1 step: saved to <run>/initial_model with
    source.json; the accuracy reward is a batch reward without `answer`, so rows without gold train, and a
    batch reward declaring `correct`/`num_tokens` gets them as lists."""
    from reinforced.config import ModelConfig
    from reinforced.models import load_folder, load_policy

    tiny = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.tokenizer.save_pretrained(tmp_path / "base")
    loaded = load_folder(tmp_path / "base")

    def has_digit(completions, prompts):
        return [float(any(ch.isdigit() for ch in c)) for c in completions]

    def short_if_right(completions, correct, num_tokens):
        assert isinstance(correct, list) and len(correct) == len(num_tokens) == len(completions) == 4  # one call
        return [c * (1 - n / 100) for c, n in zip(correct, num_tokens, strict=True)]

    rows = [{"question": f"Say a number bigger than {a}."} for a in range(4)]  # no gold anywhere
    result = reinforced.Trainer(model=loaded.model, processing_class=loaded.tokenizer,
                                reward_funcs=[has_digit, short_if_right], train_dataset=rows,
                                **{"run.output_dir": str(tmp_path / "runs"), **TINY}).train(show_progress=False)
    run_dir = tmp_path / "runs" / "run"
    step = [m for m in metrics(run_dir) if "reward/errors" in m][0]
    assert result.steps == 1 and step["reward/errors"] == 0.0 and "reward/short_if_right" in step  # no assert failed
    folder = run_dir / "initial_model"
    assert load_config(run_dir / "config.yaml").model.name_or_path == str(folder.resolve())
    assert json.loads((folder / "source.json").read_text()) == {
        "loaded_model": "Qwen2ForCausalLM", "name_or_path": str(tmp_path / "base"),
        "processing_class": type(loaded.tokenizer).__name__}
    start = load_folder(folder).model.state_dict()
    assert all(start[k].equal(v) for k, v in tiny.model.state_dict().items())  # the weights given
    with pytest.raises(ValueError, match="have no gold answer"):  # a reward that reads gold needs it
        reinforced.Trainer(model="tiny-qwen2", reward_funcs=["math_answer"], train_dataset=rows,
                           **{"run.output_dir": str(tmp_path / "runs2"), **TINY}).train(show_progress=False)


def test_yaml_data_paths_resolve_beside_the_config_from_another_directory(tmp_path, monkeypatch):
    """data paths resolve like reward files: beside the config first, then the working directory; built-in
    names stay names; the run's config.yaml holds the absolute path."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write(tmp_path / "cfg" / "rows.jsonl", "".join(json.dumps({"question": f"{a}+1?", "answer": str(a + 1)}) + "\n"
                                                   for a in range(4)))
    write(tmp_path / "elsewhere" / "rows.jsonl", '{"question": "decoy", "answer": "0"}\n')
    write(tmp_path / "elsewhere" / "only_here.jsonl", '{"question": "1+1?", "answer": "2"}\n')
    write(tmp_path / "cfg" / "run.yaml", "data: {train: [{path: rows.jsonl}]}\n"
          "eval: {sets: [{path: only_here.jsonl}, {path: gsm8k, split: test}]}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(tmp_path / "cfg" / "run.yaml")
    assert [s.path for s in (*cfg.data.train, *cfg.eval.sets)] == [
        str((tmp_path / "cfg" / "rows.jsonl").resolve()), str((tmp_path / "elsewhere" / "only_here.jsonl").resolve()),
        "gsm8k"]
    assert main(["train", str(tmp_path / "cfg" / "run.yaml"), "model.name_or_path=tiny-qwen2", "eval.sets=[]",
                 *TINY_ARGS, "--no-progress"]) == 0
    saved = load_config(tmp_path / "elsewhere" / "runs" / "run" / "config.yaml")
    assert saved.data.train[0].path == str((tmp_path / "cfg" / "rows.jsonl").resolve())
