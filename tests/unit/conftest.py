"""Shared unit-test fixtures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reinforced.models import vision
from reinforced.training.batch import collate_groups
from reinforced.types import Completion, RolloutGroup


def _make_batch(adapter, prompts, texts=("<think>4", "12 circles</think>", "7")):
    """G = len(texts) teacher-forced completions per prompt, collated into one TrainBatch (per-sample vision
    inputs for a VLM)."""
    groups = []
    for p in prompts:
        enc = adapter.encode(p)
        ids = [adapter.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        comps = tuple(Completion(t, tuple(i), (0.0,) * len(i), "stop") for t, i in zip(texts, ids, strict=True))
        groups.append(RolloutGroup(p, comps, prompt_ids=tuple(enc.input_ids), vision=enc.vision))
    batch = collate_groups(groups, adapter.pad_token_id)
    per_sample = tuple(v for gr in groups for v in vision.expand_vision(gr.vision, gr.group_size))
    return replace(batch, vision=per_sample if any(v is not None for v in per_sample) else ())


@pytest.fixture
def make_batch():
    """``make_batch(adapter, prompts, texts=...)``: a TrainBatch of fixed completions for logprob tests."""
    return _make_batch
