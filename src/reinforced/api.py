"""``Trainer``: the Python entry point, in TRL's shape, over the same ``Config`` and ``fit()`` as the CLI.

    from reinforced import Trainer

    def exact(completions, prompts, answer, **columns):          # TRL's batch-level shape
        return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]

    result = Trainer(model="smollm2-135m-instruct", reward_funcs=[exact, "format"],
                     train_dataset=[{"question": "2+3?", "answer": "5"}, ...],
                     algorithm="dapo", **{"training.max_steps": 10}).train()

Everything a ``Trainer`` takes becomes a field of one ``Config`` (``trainer.config``, saved as the run's
config.yaml), so a run started here is the run ``reinforced train`` would start from that YAML, and
``reinforced eval RUN`` / ``--resume`` find the same data, model and rewards:

* in-memory data (dict rows, ``datasets.Dataset`` / ``IterableDataset``, a ``DatasetDict`` split) is parsed by
  ``data.prompts_from_dataset`` (layout and gold detected as for files; other columns go to ``meta``, where
  rewards see them) and written by the project's row writer (``data.curation.prompt_to_row``) to
  ``<run>/data/<split>-<hash>.jsonl``, in-memory images (PIL, bytes) as PNG files in ``<run>/data/<split>-<hash>/``;
  the file loaders read it back, as for YAML. The name holds a hash of the content, so another data set under
  the same run name never overwrites the files a run was trained on. Paths are sources as in YAML.
* a loaded model is saved to ``<run>/initial_model`` with ``source.json`` naming where it came from.
* Python reward callables run in the time-limited reward worker, carried there by value (``rewards/custom.py``),
  and are saved by value to ``<run>/rewards/<name>.pkl``, which loading the run's config.yaml restores.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reinforced.config import (
    Config,
    ConfigError,
    apply_override,
    build_config,
    read_config_tree,
    resolve_config_path,
    resolve_data_paths,
    resolve_reward_files,
)

# Row keys the row parsers read (data/rows.py); any other key of an in-memory row goes to ``meta``, where
# rewards see it as a column (TRL passes every dataset column to its reward functions).
_ROW_KEYS = frozenset({"id", "question", "problem", "messages", "prompt", "answer", "solution", "ground_truth",
                       "reward_model", "choices", "options", "image", "images", "answer_type", "meta", "metadata",
                       "reward_set", "system"})


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
        train_dataset: a list of dict rows (``question`` / ``prompt`` / ``problem`` / ``messages`` + ``answer`` /
            ``solution``; other keys become columns the rewards see), a ``datasets.Dataset`` or
            ``IterableDataset``, a ``DatasetDict`` (its ``train_split``), or a path (file or folder, as in YAML).
        eval_dataset: the same kinds (a ``DatasetDict``'s ``eval_split``); evaluated before and after training
            (``eval/eval/accuracy``).
        algorithm: a preset name (``reinforced list algorithms``).
        config: the starting point: a YAML path, a packaged recipe name or a ``Config``; None: the defaults.
        processing_class: the tokenizer or processor of a loaded ``model``.
        train_split, eval_split: the split read from a ``DatasetDict`` or a data folder.
        **overrides: dotted config keys (``**{"training.max_steps": 10}``) or the same with ``__`` for the
            dot (``training__max_steps=10``); values are Python values, checked like YAML ones.
    """

    def __init__(self, model: Any = None, reward_funcs: Sequence[Any] | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, algorithm: str | None = None, *, config: str | Path | Config | None = None,
                 processing_class: Any = None, train_split: str = "train", eval_split: str = "test",
                 **overrides: Any) -> None:
        tree = config.to_dict() if isinstance(config, Config) else read_config_tree(config)
        base_dirs = [resolve_config_path(config).parent] if isinstance(config, str | Path) else []
        for key, value in overrides.items():
            apply_override(tree, key.replace("__", "."), value)
        if algorithm is not None:
            apply_override(tree, "algorithm.preset", algorithm)
        run = build_config(tree).run  # the run directory, where data, a loaded model and rewards are written
        run_dir = Path(run.output_dir) / run.name
        if model is not None:
            apply_override(tree, "model.name_or_path", _model_path(model, processing_class, run_dir))
        if reward_funcs is not None:
            apply_override(tree, "rewards.terms", reward_terms(reward_funcs, run_dir))
        if train_dataset is not None:
            source = data_source(train_dataset, run_dir / "data", "train", train_split)
            apply_override(tree, "data.train", [{"name": "train", **source}])
        if eval_dataset is not None:
            source = data_source(eval_dataset, run_dir / "data", "eval", eval_split)
            apply_override(tree, "eval.sets", [{"name": "eval", **source}])
        resolve_reward_files(tree, base_dirs)
        resolve_data_paths(tree, base_dirs)
        self.config: Config = build_config(tree)

    def train(self, resume: bool = False, show_progress: bool = True) -> Any:
        """Run ``fit(self.config)``: returns the ``FitResult`` (run_dir, eval before/after, steps)."""
        from reinforced.training.loop import fit

        return fit(self.config, resume=resume, show_progress=show_progress)


def reward_terms(reward_funcs: Sequence[Any], run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Config reward terms for ``reward_funcs``; callables are registered under their ``__name__`` (and saved
    by value to ``<run_dir>/rewards/`` when ``run_dir`` is given)."""
    from reinforced.rewards.custom import SAVED_DIR, register_callable, save_callable

    if isinstance(reward_funcs, str | Mapping) or callable(reward_funcs):
        reward_funcs = [reward_funcs]
    terms: list[dict[str, Any]] = []
    for item in reward_funcs:
        term = dict(item) if isinstance(item, Mapping) else {"name": item}
        if callable(term["name"]):
            term["name"] = register_callable(term["name"])
            if run_dir is not None:
                save_callable(term["name"], run_dir / SAVED_DIR)
        if not isinstance(term["name"], str):
            raise ConfigError(f"reward_funcs: {item!r} is not a callable, a reward name or a dict with 'name'")
        terms.append(term)
    names = [t["name"] for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward_funcs names a reward twice: {names}")
    if terms and not any(t.get("accuracy") for t in terms):
        terms[0]["accuracy"] = True
    return terms


def data_source(data: Any, folder: Path, kind: str, split: str = "train") -> dict[str, Any]:
    """A ``data.train`` / ``eval.sets`` entry (without ``name``) for rows, a ``datasets`` object or a path.

    A path is a source read by the file loaders (its ``split`` for folders); anything else is read into
    prompts by ``prompts_from_dataset`` and written under ``folder`` (``write_prompts``), named by ``kind``.
    """
    from reinforced.data import DataError, prompts_from_dataset

    if isinstance(data, str | Path):
        path = Path(data).expanduser()
        return {"path": str(path.resolve()) if path.exists() else str(data), "split": split}
    rows = list(_rows_of(data, split, kind))
    try:
        prompts = prompts_from_dataset(rows, split, name=kind)
    except DataError as err:
        raise ConfigError(f"{kind}_dataset: {err}") from None
    return {"path": str(write_prompts(prompts, folder, kind).resolve())}


def _rows_of(data: Any, split: str, kind: str) -> Iterable[dict[str, Any]]:
    """The rows of an in-memory data set (a ``DatasetDict``'s ``split``), other columns moved to ``meta``."""
    if isinstance(data, Mapping) and data and all(hasattr(v, "column_names") for v in data.values()):
        if split not in data:
            raise ConfigError(f"{kind}_dataset: the DatasetDict has no split {split!r} (available: "
                              f"{', '.join(data)}); pass {kind}_split=<one of them>")
        data = data[split]
    is_rows = isinstance(data, Sequence) and not isinstance(data, str) and all(isinstance(r, Mapping) for r in data)
    if not (is_rows or hasattr(data, "column_names")) or isinstance(data, Mapping) or not data:
        empty = " (empty)" if isinstance(data, Sequence) and not data else ""
        raise ConfigError(f"{kind}_dataset: expected a list of dict rows, a datasets.Dataset / IterableDataset / "
                          f"DatasetDict or a path, got {type(data).__name__}{empty}")
    for row in data:
        fixed = dict(row)
        extra = {k: fixed.pop(k) for k in list(fixed) if k not in _ROW_KEYS}
        if extra:
            fixed["meta"] = {**(fixed.pop("meta", None) or fixed.pop("metadata", None) or {}), **extra}
        yield fixed


def write_prompts(prompts: Sequence[Any], folder: Path, kind: str) -> Path:
    """Write prompts as ``folder/<kind>-<hash>.jsonl`` with ``curation.prompt_to_row``; in-memory images
    become PNG files in ``folder/<kind>-<hash>/`` named by row and position (paths relative to the file).

    The hash covers the rows and the image bytes: the same data gives the same file (a resumed run), other
    data a new one. Returns the path of the JSONL file.
    """
    pngs: dict[str, bytes] = {}
    rows: list[tuple[Any, tuple[Any, ...]]] = []  # (prompt, images: paths as given, new files by name)
    for i, prompt in enumerate(prompts):
        images = []
        for k, image in enumerate(prompt.images):
            if isinstance(image, str | Path):
                images.append(image)
            else:
                images.append(name := f"{i:06d}-{k}.png")
                pngs[name] = _png(image)
        rows.append((prompt, tuple(images)))
    digest = hashlib.sha256(_jsonl(rows, kind, {}).encode())
    for name in sorted(pngs):
        digest.update(pngs[name])
    stem = f"{kind}-{digest.hexdigest()[:12]}"
    (folder / stem if pngs else folder).mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        (folder / stem / name).write_bytes(data)
    path = folder / f"{stem}.jsonl"
    path.write_text(_jsonl(rows, kind, {name: Path(stem) / name for name in pngs}), encoding="utf-8")
    return path


def _jsonl(rows: Sequence[tuple[Any, tuple[Any, ...]]], kind: str, files: Mapping[str, Path]) -> str:
    """The rows as JSONL text, each new image file name replaced by its path in ``files`` (when there)."""
    from dataclasses import replace

    from reinforced.data.curation import prompt_to_row

    lines = []
    for i, (prompt, images) in enumerate(rows):
        paths = tuple(files.get(im, im) if isinstance(im, str) else im for im in images)
        try:
            lines.append(json.dumps(prompt_to_row(replace(prompt, images=paths)), ensure_ascii=False) + "\n")
        except TypeError as err:
            raise ConfigError(f"{kind}_dataset row {i} ({prompt.prompt_id!r}) cannot be written as JSON ({err}); "
                              "give extra columns as strings, numbers, lists or dicts") from None
    return "".join(lines)


def _png(image: Any) -> bytes:
    """A PIL image as PNG bytes (pixels kept exactly); modes PNG cannot hold (CMYK, ...) as RGB."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except OSError:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _model_path(model: Any, processing_class: Any, run_dir: Path) -> str:
    """A model argument as ``model.name_or_path``: names as given, folders absolute, a loaded model saved first
    (with ``source.json``: its class and the ``name_or_path`` it was loaded from)."""
    if isinstance(model, str | Path):
        path = Path(model).expanduser()
        return str(path.resolve()) if path.is_dir() else str(model)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"model: expected a name, a path or a loaded transformers model, got {type(model).__name__}")
    folder = run_dir / "initial_model"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = processing_class or _tokenizer_of(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    source = {"loaded_model": type(model).__name__, "name_or_path": getattr(model, "name_or_path", None) or None,
              "processing_class": type(tokenizer).__name__}
    (folder / "source.json").write_text(json.dumps(source, indent=1) + "\n")
    return str(folder.resolve())


def _tokenizer_of(model: Any) -> Any:
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", "") or ""
    if not Path(source).is_dir():
        raise ConfigError("model: a loaded model needs processing_class=<its tokenizer or processor> "
                          f"(its name_or_path {source!r} is not a local folder to read one from)")
    return AutoTokenizer.from_pretrained(source)


__all__ = ["Trainer", "data_source", "reward_terms", "write_prompts"]
