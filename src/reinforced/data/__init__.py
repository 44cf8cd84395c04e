"""Data: loaders (files -> Prompt), procedural tasks, prompt templates and checkpointed samplers.

Trainer-facing API (docs/contracts.md): ``TASKS``, ``TEMPLATES``, ``SAMPLERS``, ``load_jsonl``,
``build_sampler(cfg.data, seed)``, ``build_eval_sets(cfg.eval, seed)``, ``to_messages(prompt, template)``.
"""

from __future__ import annotations

from reinforced.config import DataConfig
from reinforced.data import curriculum  # noqa: F401  (registers curriculum and staged samplers)
from reinforced.data.curation import filter_by_pass_rate, inspect_file, list_tasks, write_jsonl
from reinforced.data.datasets import (
    DataError,
    LoadSummary,
    builtin_names,
    load_file,
    load_jsonl,
    prompts_from_dataset,
)
from reinforced.data.samplers import SAMPLERS, BaseSampler, PromptStats, Sampler
from reinforced.data.sources import Source, build_eval_sets, build_sources
from reinforced.data.tasks import FORMS, TASKS, Task
from reinforced.data.templates import TEMPLATES, Template, to_messages


def build_sampler(cfg: DataConfig, seed: int) -> BaseSampler:
    """The configured sampler over the configured training sources (mixed by weight)."""
    sampler_cls = SAMPLERS[cfg.sampler.name]
    return sampler_cls(build_sources(cfg.train, seed, stream="train"), seed, cfg.sampler.params)


__all__ = [
    "FORMS", "SAMPLERS", "TASKS", "TEMPLATES", "BaseSampler", "DataError", "LoadSummary", "PromptStats",
    "Sampler", "Source", "Task", "Template", "build_eval_sets", "build_sampler", "build_sources",
    "builtin_names", "filter_by_pass_rate", "inspect_file", "list_tasks", "load_file", "load_jsonl",
    "prompts_from_dataset",
    "to_messages", "write_jsonl",
]
