"""``Trainer``: the Python entry point, in TRL's shape, over the same ``Config`` and ``fit()`` as the CLI.

    from reinforced import Trainer

    def exact(completions, prompts, answer, **columns):          # TRL's batch-level shape
        return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]

    result = Trainer(model="smollm2-135m-instruct", reward_funcs=[exact, "format"],
                     train_dataset=[{"question": "2+3?", "answer": "5"}, ...],
                     algorithm="dapo", **{"training.max_steps": 10}).train()

Everything a ``Trainer`` takes becomes a field of one ``Config`` (``trainer.config``, saved as the run's
config.yaml), so a run started here is the run ``reinforced train`` would start from that YAML. Datasets given
as rows or ``datasets.Dataset`` objects are written into the run directory (``<run>/data/``) and read back by
the file loaders, so the saved config names real files. Python reward callables run in the time-limited reward
worker, carried there by value (``rewards/custom.py``): no registration and no ``__main__`` guard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reinforced.config import (
    Config,
    ConfigError,
    apply_override,
    build_config,
    read_config_tree,
    resolve_reward_files,
)

# Row keys the loaders read (data/rows.py); any other key of a row given to Trainer goes to ``meta``, where
# rewards see it as a column.
_ROW_KEYS = frozenset({"id", "question", "problem", "messages", "answer", "choices", "image", "images",
                       "answer_type", "meta", "metadata", "reward_set", "system"})


class Trainer:
    """Train a model with RL on your data and rewards; ``.train()`` runs it and returns a ``FitResult``.

    Args:
        model: a built-in name (``reinforced list models``), a local Hugging Face folder, or a loaded
            ``transformers`` model (saved to ``<run>/initial_model`` with ``processing_class`` or the
            tokenizer of its ``name_or_path``). None keeps ``config``'s model.
        reward_funcs: rewards, each a callable (batch-level ``f(completions, prompts, **columns) ->
            list[float | None]`` or per-sample ``f(completion, prompt, **params) -> float | None``), a
            registered name (``"math_answer"``), a reference (``"my_rewards.py:fn"``, ``"pkg.mod:fn"``),
            or a dict with the keys of ``config.RewardTerm`` (``name`` may be a callable). The first one
            defines correctness (``accuracy: true``) unless a dict says otherwise; the others weigh 1.0.
        train_dataset: a list of dict rows (``question``/``prompt`` + ``answer``; other keys become columns
            the rewards see), a ``datasets.Dataset`` (or a ``DatasetDict``'s ``train`` split), or a path.
        eval_dataset: the same kinds; evaluated before and after training (``eval/eval/accuracy``).
        algorithm: a preset name (``reinforced list algorithms``).
        config: the starting point: a YAML path, a packaged recipe name or a ``Config``; None: the defaults.
        processing_class: the tokenizer or processor of a loaded ``model``.
        **overrides: dotted config keys (``**{"training.max_steps": 10}``) or the same with ``__`` for the
            dot (``training__max_steps=10``); values are Python values, checked like YAML ones.
    """

    def __init__(self, model: Any = None, reward_funcs: Sequence[Any] | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, algorithm: str | None = None, *, config: str | Path | Config | None = None,
                 processing_class: Any = None, **overrides: Any) -> None:
        tree = config.to_dict() if isinstance(config, Config) else read_config_tree(config)
        for key, value in overrides.items():
            apply_override(tree, key.replace("__", "."), value)
        if algorithm is not None:
            apply_override(tree, "algorithm.preset", algorithm)
        run = build_config(tree).run  # the run directory, where rows and a loaded model are written
        run_dir = Path(run.output_dir) / run.name
        if model is not None:
            apply_override(tree, "model.name_or_path", _model_path(model, processing_class, run_dir))
        if reward_funcs is not None:
            apply_override(tree, "rewards.terms", reward_terms(reward_funcs))
        if train_dataset is not None:
            apply_override(tree, "data.train", [data_source(train_dataset, run_dir / "data", "train")])
        if eval_dataset is not None:
            apply_override(tree, "eval.sets", [{**data_source(eval_dataset, run_dir / "data", "eval"), "name": "eval"}])
        base_dirs = [Path(config).parent] if isinstance(config, str | Path) and Path(config).is_file() else []
        resolve_reward_files(tree, base_dirs)
        self.config: Config = build_config(tree)

    def train(self, resume: bool = False, show_progress: bool = True) -> Any:
        """Run ``fit(self.config)``: returns the ``FitResult`` (run_dir, eval before/after, steps)."""
        from reinforced.training.loop import fit

        return fit(self.config, resume=resume, show_progress=show_progress)


def reward_terms(reward_funcs: Sequence[Any]) -> list[dict[str, Any]]:
    """Config reward terms for ``reward_funcs``; callables are registered under their ``__name__``."""
    from reinforced.rewards.custom import register_callable

    if isinstance(reward_funcs, str | Mapping) or callable(reward_funcs):
        reward_funcs = [reward_funcs]
    terms: list[dict[str, Any]] = []
    for item in reward_funcs:
        term = dict(item) if isinstance(item, Mapping) else {"name": item}
        if callable(term["name"]):
            term["name"] = register_callable(term["name"])
        if not isinstance(term["name"], str):
            raise ConfigError(f"reward_funcs: {item!r} is not a callable, a reward name or a dict with 'name'")
        terms.append(term)
    names = [t["name"] for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward_funcs names a reward twice: {names}")
    if terms and not any(t.get("accuracy") for t in terms):
        terms[0]["accuracy"] = True
    return terms


def data_source(data: Any, folder: Path, split: str) -> dict[str, Any]:
    """A ``data.train`` / ``eval.sets`` entry for rows, a ``datasets`` object or a path."""
    if isinstance(data, str | Path):
        return {"path": str(Path(data).expanduser().resolve()) if Path(data).expanduser().exists() else str(data)}
    if hasattr(data, "keys") and hasattr(data, "save_to_disk") and not hasattr(data, "features"):  # DatasetDict
        if split not in data.keys() and "train" not in data.keys():
            raise ConfigError(f"a DatasetDict without a {split!r} or 'train' split: pass one split")
        data = data[split] if split in data.keys() else data["train"]
    if hasattr(data, "to_list") and hasattr(data, "features"):  # datasets.Dataset: its rows
        data = data.to_list()
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        return {"path": str(_write_rows(list(data), folder / f"{split}.jsonl"))}
    raise ConfigError(f"{split}_dataset: expected a list of dict rows, a datasets.Dataset or a path, "
                      f"got {type(data).__name__}{' (empty)' if isinstance(data, Sequence) and not data else ''}")


def _write_rows(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """Rows as JSONL in the loaders' layout: ``prompt`` read as the question, unknown keys moved to ``meta``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i, row in enumerate(rows):
            fixed = dict(row)
            if "prompt" in fixed and not {"question", "problem", "messages"} & set(fixed):
                prompt = fixed.pop("prompt")
                fixed["messages" if isinstance(prompt, list) else "question"] = prompt
            extra = {k: fixed.pop(k) for k in list(fixed) if k not in _ROW_KEYS}
            if extra:
                fixed["meta"] = {**(fixed.get("meta") or {}), **extra}
            try:
                out.write(json.dumps(fixed) + "\n")
            except TypeError as err:
                raise ConfigError(f"row {i} cannot be written as JSON ({err}); give images as file paths, "
                                  f"or pass a path to a dataset on disk") from None
    return path


def _model_path(model: Any, processing_class: Any, run_dir: Path) -> str:
    """A model argument as ``model.name_or_path``: names and paths as given, a loaded model saved first."""
    if isinstance(model, str | Path):
        return str(model)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"model: expected a name, a path or a loaded transformers model, got {type(model).__name__}")
    folder = run_dir / "initial_model"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = processing_class or _tokenizer_of(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder.resolve())


def _tokenizer_of(model: Any) -> Any:
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", "") or ""
    if not Path(source).is_dir():
        raise ConfigError("model: a loaded model needs processing_class=<its tokenizer or processor> "
                          f"(its name_or_path {source!r} is not a local folder to read one from)")
    return AutoTokenizer.from_pretrained(source)


__all__ = ["Trainer", "data_source", "reward_terms"]
