"""Data sources: a config ``DataSource`` -> an indexable pool of Prompts (a file, or a procedural task).

A file source is a fixed list. A procedural source is infinite: prompt ``i`` is generated from its own
rng seeded by (source name, stream, seed, i), so any prompt can be regenerated from its index, the
``prompt_id`` (``<name>/<form>/<stream>-s<seed>/<i>``) encodes where it came from, and the train and
eval streams never share a prompt. ``limit`` turns a procedural task into a fixed pool of that size,
so per-prompt statistics (curricula, prioritized sampling, online filtering) apply to it too.

Reserved ``params`` keys of a task source: ``name`` (source name, default the task name), ``form``
(open | choice | yes_no), ``num_choices``; the rest go to the task (``difficulty``, ``digits``, ...).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reinforced.config import DataSource, EvalConfig
from reinforced.data.datasets import LoadSummary, load_file, resolve_path
from reinforced.data.tasks import FORMS, TASKS, Task
from reinforced.types import Prompt

SOURCE_KEYS = ("form", "num_choices")


@dataclass
class Source:
    """One source of prompts. ``size`` is None for an infinite procedural stream."""

    name: str
    weight: float
    pool: list[Prompt] | None = None
    task: Task | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    form: str = "open"
    num_choices: int = 4
    seed: int = 0
    stream: str = "train"
    summary: LoadSummary | None = None

    @property
    def size(self) -> int | None:
        return None if self.pool is None else len(self.pool)

    @property
    def procedural(self) -> bool:
        return self.task is not None

    def generate(self, index: int, difficulty: float | None = None, form: str | None = None) -> Prompt:
        """Procedural prompt ``index`` (optionally at another difficulty or question form)."""
        assert self.task is not None
        form = form or self.form
        params = dict(self.task_params)
        if difficulty is not None:
            params["difficulty"] = float(difficulty)
        rng = random.Random(f"{self.name}|{self.stream}|{self.seed}|{index}")
        prompt = self.task.sample(rng, form=form, num_choices=self.num_choices, **params)
        pid = f"{self.name}/{form}/{self.stream}-s{self.seed}/{index}"
        return replace(prompt, prompt_id=pid, task=self.name)

    def get(self, index: int, difficulty: float | None = None, form: str | None = None) -> Prompt:
        """Prompt ``index`` of the pool, or generated (procedural sources without a pool)."""
        if self.pool is not None:
            if form is None or form == self.form:
                return self.pool[index]
            if self.task is None:
                raise ValueError(f"source {self.name!r} is a file; only procedural tasks can be re-asked in "
                                 f"form {form!r}")
            return self.generate(index, None, form)  # the same problem, asked in another form
        return self.generate(index, difficulty, form)

    def difficulty_of(self, index: int, key: str = "difficulty") -> float | None:
        """The pool prompt's ``metadata[key]`` as a float (None when absent)."""
        if self.pool is None:
            return None
        value = self.pool[index].metadata.get(key)
        return None if value is None else float(value)


def _task_source(ds: DataSource, seed: int, stream: str, name: str) -> Source:
    task = TASKS[ds.task]  # type: ignore[index]
    params = {k: v for k, v in ds.params.items() if k not in SOURCE_KEYS}
    form = ds.params.get("form", "open")
    if form not in FORMS:
        raise ValueError(f"data source {name!r}: unknown question form {form!r}; valid: {', '.join(FORMS)}")
    accepted = inspect.signature(task.generate).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(accepted) - {"rng"})
        if unknown:
            valid = [p for p in accepted if p != "rng"]
            raise ValueError(f"task {ds.task!r}: unknown parameter(s) {unknown}; valid: {', '.join(valid)}")
    source = Source(name=name, weight=ds.weight, task=task, task_params=params, form=form,
                    num_choices=int(ds.params.get("num_choices", 4)), seed=seed, stream=stream)
    source.generate(0)  # fail at build time, not mid-run, on a bad parameter value
    if ds.limit is not None:
        source.pool = [source.generate(i) for i in range(ds.limit)]
    return source


def _file_source(ds: DataSource, name: str) -> Source:
    options = dict(ds.params)
    prompts, summary = load_file(resolve_path(ds.path, ds.split), task=name, limit=ds.limit, **options)  # type: ignore[arg-type]
    return Source(name=name, weight=ds.weight, pool=prompts, summary=summary)


def source_name(ds: DataSource) -> str:
    """``name``, else the task name, else the path's built-in name / folder / file stem.

    >>> source_name(DataSource(path="gsm8k")), source_name(DataSource(path="../data/gsm8k/test.jsonl"))
    ('gsm8k', 'gsm8k')
    """
    if ds.name is not None:
        return ds.name
    if ds.task is not None:
        return ds.task
    parts = [p for p in str(ds.path).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    last = parts[-1]
    stem = last.rsplit(".", 1)[0] if "." in last else last
    if stem in ("train", "test", "validation", "val", "dev", "metadata") and len(parts) > 1:
        return parts[-2]
    return stem


def build_sources(sources: Sequence[DataSource], seed: int, stream: str = "train") -> list[Source]:
    """Sources with unique names (a repeated name gets ``#2``, ``#3``, ...)."""
    if not sources:
        raise ValueError("no data sources configured: give data.train a path or a task")
    out: list[Source] = []
    used: dict[str, int] = {}
    for ds in sources:
        base = source_name(ds)
        used[base] = used.get(base, 0) + 1
        name = base if used[base] == 1 else f"{base}#{used[base]}"
        out.append(_task_source(ds, seed, stream, name) if ds.task is not None else _file_source(ds, name))
    return out


def build_eval_sources(cfg: EvalConfig, seed: int) -> list[Source]:
    """Held-out sources with fixed pools: the first ``max_prompts`` rows of each file, or a procedural pool
    drawn from the eval stream (disjoint from training prompts by construction)."""
    sources = build_sources(cfg.sets, seed, stream="eval") if cfg.sets else []
    for source in sources:
        if source.pool is None:
            source.pool = [source.generate(i) for i in range(cfg.max_prompts)]
        source.pool = source.pool[: cfg.max_prompts]
    return sources


def build_eval_sets(cfg: EvalConfig, seed: int) -> dict[str, list[Prompt]]:
    """Held-out sets by name (``build_eval_sources``' pools)."""
    return {source.name: list(source.pool or ()) for source in build_eval_sources(cfg, seed)}


def locate(source: Source, index: int) -> str:
    """Where prompt ``index`` of ``source`` comes from: ``file:line`` for files, the sample id for tasks."""
    summary = source.summary
    if summary is not None and index < len(summary.lines):
        return f"{summary.path}:{summary.lines[index]}"
    prompt = source.get(index)
    return f"{source.name} sample {prompt.prompt_id}"


def pool_index(sources: Sequence[Source]) -> dict[str, tuple[int, int]]:
    """prompt_id -> (source index, item index) over every fixed pool (ids must be unique across sources)."""
    index: dict[str, tuple[int, int]] = {}
    for s, source in enumerate(sources):
        for i, prompt in enumerate(source.pool or ()):
            if prompt.prompt_id in index:
                other = sources[index[prompt.prompt_id][0]].name
                raise ValueError(f"prompt id {prompt.prompt_id!r} occurs in sources {other!r} and "
                                 f"{source.name!r}; ids must be unique across a mixture")
            index[prompt.prompt_id] = (s, i)
    return index


def describe_sources(sources: Sequence[Source]) -> Mapping[str, str]:
    """A one-line description per source (for the run log)."""
    return {s.name: (str(s.summary) if s.summary else
                     f"task {s.task.name if s.task else '?'} ({s.form}), "
                     f"{'infinite' if s.pool is None else f'{len(s.pool)} fixed prompts'}, weight {s.weight}")
            for s in sources}
