"""Offline pass-rate filtering, the JSONL it writes (read back by the curriculum), inspect and list tasks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reinforced.config import DataConfig, DataSource, SamplerConfig
from reinforced.data import (
    build_sampler,
    filter_by_pass_rate,
    inspect_file,
    list_tasks,
    load_jsonl,
    write_jsonl,
)
from reinforced.data.datasets import resolve_path
from reinforced.data.tasks import TASKS


def fake_model(k: int = 8):
    """A stand-in for 'sample k completions and score them': pass rate falls with the number size."""
    def rates(batch):
        return [min(k, int(p.answer) // 25) / k if int(p.answer) >= 0 else 0.0 for p in batch]
    return rates


def test_filter_band_and_counts() -> None:
    prompts = [TASKS["arithmetic"].sample(random.Random(i)) for i in range(40)]
    rates = fake_model()(prompts)
    kept, stats = filter_by_pass_rate(prompts, fake_model(), low=0.2, high=0.8, batch_size=7)
    expected = [(p, r) for p, r in zip(prompts, rates, strict=True) if 0.2 <= r <= 0.8]
    assert kept == expected
    assert stats["kept"] == len(expected)
    assert stats["dropped_zero"] == sum(r == 0 for r in rates) and stats["dropped_one"] == sum(r == 1 for r in rates)
    assert stats["dropped_band"] + stats["dropped_zero"] + stats["dropped_one"] + stats["kept"] == 40
    everything, _ = filter_by_pass_rate(prompts, fake_model(), keep_extremes=True)
    assert len(everything) == 40
    with pytest.raises(ValueError, match="outside"):
        filter_by_pass_rate(prompts[:1], lambda b: [1.5])
    with pytest.raises(ValueError, match="returned 0 rates for 1 prompts"):
        filter_by_pass_rate(prompts[:1], lambda b: [])


def test_written_pass_rates_seed_the_curriculum(tmp_path: Path) -> None:
    prompts = load_jsonl(resolve_path("gsm8k", "test"), limit=12)
    rates = [i / 11 for i in range(12)]
    out = write_jsonl(tmp_path / "curated.jsonl", prompts, rates)
    back = load_jsonl(out)
    assert [(p.prompt_id, p.question, p.answer) for p in back] == [(p.prompt_id, p.question, p.answer) for p in prompts]
    assert [p.metadata["pass_rate"] for p in back] == rates
    cfg = DataConfig(train=(DataSource(path=str(out)),),
                     sampler=SamplerConfig(name="curriculum", params={"by": "pass_rate", "start": 0.25, "steps": 100}))
    sampler = build_sampler(cfg, 0)
    drawn = {p.prompt_id for _ in range(30) for p in sampler.next(1)}
    assert drawn == {p.prompt_id for p in prompts[-3:]}  # the 3 highest pass rates = the easiest quarter


def test_image_rows_round_trip(tmp_path: Path) -> None:
    prompts = load_jsonl(resolve_path("geometry3k_mini", "test"), limit=2)
    back = load_jsonl(write_jsonl(tmp_path / "g.jsonl", prompts))
    assert [(p.images, p.choices, p.answer) for p in back] == [(p.images, p.choices, p.answer) for p in prompts]


def test_inspect_report() -> None:
    report = inspect_file("puzzlevqa", split="test", num_examples=2)
    assert "20 rows, 20 images" in report and "choice 20" in report and "512x512" in report
    assert report.count("--- puzzlevqa-") == 2 and "[user] <image>What is the missing" in report


def test_list_tasks_names_forms_and_rewards() -> None:
    lines = {line.split()[0]: line for line in list_tasks().splitlines()}
    assert {"arithmetic", "word_problem", "countdown", "sequence_type"} <= set(lines)
    assert "open, choice, yes_no" in lines["arithmetic"] and "1*math_answer + 0.1*format" in lines["arithmetic"]
    assert "expression_equals_target" in lines["countdown"]


def test_a_prompt_whose_verifier_always_failed_is_dropped_not_scored_zero():
    """NaN pass rate (every sample's verifier failed) is its own count, never a 0 rate kept by the band."""
    import math

    from reinforced.data import filter_by_pass_rate
    from reinforced.types import Prompt

    ps = [Prompt(str(i), "q") for i in range(3)]
    rates = {"0": math.nan, "1": 0.5, "2": 0.0}
    kept, stats = filter_by_pass_rate(ps, lambda b: [rates[p.prompt_id] for p in b], keep_extremes=True)
    assert [p.prompt_id for p, _ in kept] == ["1", "2"]
    assert stats["dropped_failed"] == 1.0 and stats["mean_pass_rate"] == 0.25
