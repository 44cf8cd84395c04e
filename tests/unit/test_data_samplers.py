"""Samplers: epochs, mixture weights, prioritized frequencies (chi-square), filters, curricula, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reinforced.config import DataConfig, DataSource, EvalConfig, SamplerConfig
from reinforced.data import SAMPLERS, build_eval_sets, build_sampler
from reinforced.data.curriculum import competence
from reinforced.registry import UnknownNameError

# chi-square critical values at p = 0.001 (a deterministic seed makes these tests non-flaky anyway)
CHI2_CRIT_001 = {1: 10.83, 2: 13.82, 5: 20.52}


def chi_square(observed: Counter[Any], expected: dict[Any, float]) -> float:
    return sum((observed[k] - e) ** 2 / e for k, e in expected.items())


def make(name: str, sources: tuple[DataSource, ...], seed: int = 0, **params: Any):
    return build_sampler(DataConfig(train=sources, sampler=SamplerConfig(name=name, params=params)), seed)


POOL = (DataSource(task="arithmetic", limit=6),)


def test_uniform_is_without_replacement_per_epoch() -> None:
    s = make("uniform", POOL)
    ids = [p.prompt_id for _ in range(3) for p in s.next(2)]
    again = [p.prompt_id for _ in range(3) for p in s.next(2)]
    assert len(set(ids)) == 6 and set(ids) == set(again) and ids != again


def test_procedural_stream_is_infinite_and_ids_encode_seed_and_index() -> None:
    s = make("uniform", (DataSource(task="arithmetic"),), seed=3)
    ids = [p.prompt_id for p in s.next(3)]
    assert ids == ["arithmetic/open/train-s3/0", "arithmetic/open/train-s3/1", "arithmetic/open/train-s3/2"]


def test_mixture_frequencies_follow_weights() -> None:
    s = make("uniform", (DataSource(task="arithmetic", weight=3.0), DataSource(path="gsm8k", weight=1.0)))
    counts = Counter(p.task for _ in range(500) for p in s.next(4))
    assert chi_square(counts, {"arithmetic": 1500.0, "gsm8k": 500.0}) < CHI2_CRIT_001[1]
    stats = s.stats()
    assert (stats["sampler/drawn/arithmetic"], stats["sampler/drawn/gsm8k"]) == (counts["arithmetic"], counts["gsm8k"])


def test_prioritized_frequencies_match_p_i() -> None:
    s = make("prioritized", POOL, floor=0.1, prior=0.5)
    ids = [p.prompt_id for p in s.sources[0].pool]
    rates = [1.0, 0.95, 0.5, 0.25, 0.0]  # the sixth prompt stays unseen (prior 0.5)
    s.observe(ids[:5], rates, step=0)
    weights = [max(1 - r, 0.1) for r in rates] + [0.5]
    total = sum(weights)
    draws = 6000
    counts = Counter(s.next(1)[0].prompt_id for _ in range(draws))
    expected = {pid: draws * w / total for pid, w in zip(ids, weights, strict=True)}
    assert chi_square(counts, expected) < CHI2_CRIT_001[5]
    batch = s.next(6)
    assert len({p.prompt_id for p in batch}) == 6  # distinct within a step when the pool allows


def test_prioritized_needs_fixed_pools() -> None:
    with pytest.raises(ValueError, match=r"infinite procedural .*give those sources a 'limit'"):
        make("prioritized", (DataSource(task="arithmetic"),))


def test_online_filter_skips_solved_and_unsolved_prompts() -> None:
    s = make("online_filter", POOL)
    ids = [p.prompt_id for p in s.sources[0].pool]
    s.observe(ids[:2], [1.0, 0.0], step=0)
    s.observe(ids[2:4], [0.5, 0.25], step=0)
    drawn = Counter(p.prompt_id for _ in range(30) for p in s.next(2))
    assert drawn[ids[0]] == drawn[ids[1]] == 0 and all(drawn[i] > 0 for i in ids[2:])
    stats = s.stats()
    assert stats["sampler/skipped"] > 0 and stats["sampler/seen_frac"] == 4 / 6
    revisit = make("online_filter", POOL, revisit_after=2)
    revisit.observe(ids[:1], [1.0], step=0)
    revisit.observe(ids[1:2], [0.5], step=5)  # step 6 now: the solved prompt is due a revisit
    assert ids[0] in {p.prompt_id for _ in range(10) for p in revisit.next(2)}


def test_window_estimator_forgets_old_results() -> None:
    s = make("online_filter", POOL, estimator="window", window=2)
    pid = s.sources[0].pool[0].prompt_id
    for step, acc in enumerate([0.0, 1.0, 1.0]):
        s.observe([pid], [acc], step)
    assert s.prompt_stats.success(pid) == 1.0 and s.prompt_stats.attempts(pid) == 3
    assert s.prompt_stats.last_step(pid) == 2 and s.is_extreme(pid)


def test_competence_schedules() -> None:
    assert competence(0, "sqrt", 0.2, 100) == pytest.approx(0.2)
    assert competence(50, "sqrt", 0.2, 100) == pytest.approx((0.04 + 0.96 * 0.5) ** 0.5)
    assert competence(3, "constant", 0.4, 10) == 0.4
    with pytest.raises(ValueError, match="unknown curriculum schedule 'cosine'; valid: linear, sqrt, step"):
        competence(0, "cosine", 0.2, 10)


def test_curriculum_by_difficulty_opens_the_pool_on_schedule(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "question": f"q{i}?", "answer": "1", "meta": {"hardness": (i * 7) % 10}} for i in range(10)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = make("curriculum", (DataSource(path=str(tmp_path / "c.jsonl")),), field="hardness", start=0.2, steps=4)
    by_hardness = sorted(rows, key=lambda r: r["meta"]["hardness"])
    ids = [r["id"] for r in by_hardness]
    early = {p.prompt_id for _ in range(20) for p in s.next(1)}
    assert early == set(ids[:2])  # c(0) = 0.2 -> the 2 easiest of 10
    s.observe([], [], step=1)  # now step 2: c = 0.2 + 0.8 * 2/4 = 0.6
    assert {p.prompt_id for _ in range(60) for p in s.next(1)} == set(ids[:6])
    s.observe([], [], step=3)
    assert {p.prompt_id for _ in range(100) for p in s.next(1)} == set(ids)


def test_curriculum_by_pass_rate_and_procedural_difficulty() -> None:
    s = make("curriculum", POOL, by="pass_rate", start=0.34, steps=10)
    ids = [p.prompt_id for p in s.sources[0].pool]
    s.observe(ids, [0.1, 0.9, 0.5, 0.0, 0.8, 0.3], step=0)
    assert {p.prompt_id for _ in range(30) for p in s.next(1)} <= {ids[1], ids[4], ids[2]}
    proc = make("curriculum", (DataSource(task="arithmetic"),), start=0.0, steps=4, max_difficulty=1.0)
    assert proc.next(1)[0].metadata["difficulty"] == 0.0
    proc.observe([], [], step=1)
    assert proc.next(1)[0].metadata["difficulty"] == 0.5
    with pytest.raises(ValueError, match=r"has no metadata\['level'\]"):
        make("curriculum", POOL, field="level")


STAGES = [{"form": "yes_no", "until_step": 2}, {"form": "choice", "until_accuracy": 0.75, "acc_window": 4},
          {"form": "open"}]


def test_staged_advances_exactly_when_its_rules_say() -> None:
    s = make("staged", (DataSource(task="arithmetic"),), stages=STAGES)
    forms = []
    for step in range(2):
        forms.append(s.next(2)[0].metadata.get("form", "open"))
        s.observe(["x", "y"], [1.0, 1.0], step)
    assert forms == ["yes_no", "yes_no"] and s.next(1)[0].metadata["form"] == "choice"  # step 2
    s.observe(["a", "b", "c"], [1.0, 1.0, 1.0], step=2)  # 3 < acc_window prompts: not yet
    assert s.next(1)[0].metadata["form"] == "choice"
    s.observe(["d"], [0.0], step=3)  # window mean 0.75 >= 0.75
    assert s.next(1)[0].reward_set == "arithmetic" and s.stats()["sampler/stage"] == 2.0


def test_staged_on_held_out_accuracy_and_data_mix() -> None:
    stages = [{"sources": {"arithmetic": 1.0}, "until_accuracy": 0.6, "eval": "held"},
              {"sources": ["countdown"], "difficulty": 0.0}]
    s = make("staged", (DataSource(task="arithmetic"), DataSource(task="countdown")), stages=stages)
    assert {p.task for p in s.next(8)} == {"arithmetic"}
    s.observe_eval("held", 0.5, step=0)
    assert {p.task for p in s.next(8)} == {"arithmetic"}
    s.observe_eval("held", 0.6, step=1)
    batch = s.next(8)
    assert {p.task for p in batch} == {"countdown"} and all(len(p.metadata["numbers"]) == 3 for p in batch)
    with pytest.raises(ValueError, match="applies to procedural tasks only"):
        make("staged", (DataSource(path="gsm8k"),), stages=[{"form": "choice"}])
    with pytest.raises(ValueError, match="unknown or all-zero sources"):
        make("staged", POOL, stages=[{"sources": ["gsm8k"]}])


def _run(sampler: Any, steps: int, start: int, accuracy: Callable[[str], float]) -> list[str]:
    seen = []
    for step in range(start, start + steps):
        batch = sampler.next(3)
        seen += [p.prompt_id for p in batch]
        sampler.observe([p.prompt_id for p in batch], [accuracy(p.prompt_id) for p in batch], step)
        if hasattr(sampler, "eval_acc") and step == 3:
            sampler.observe_eval("held", 0.9, step)
    return seen


RESUME_CASES = {
    "uniform": ((DataSource(task="arithmetic", limit=5), DataSource(task="countdown", weight=0.5)), {}),
    "prioritized": ((DataSource(task="arithmetic", limit=8),), {"floor": 0.2}),
    "online_filter": ((DataSource(task="arithmetic", limit=8),), {}),
    "curriculum": ((DataSource(task="arithmetic", limit=8),), {"by": "pass_rate", "start": 0.3, "steps": 6}),
    "staged": ((DataSource(task="arithmetic", limit=8), DataSource(task="word_problem")),
               {"stages": [{"until_step": 2, "form": "choice"}, {"until_accuracy": 0.5, "eval": "held"}, {}]}),
}


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resume_equals_uninterrupted(name: str) -> None:
    sources, params = RESUME_CASES[name]

    def acc(pid: str) -> float:
        return float(sum(map(ord, pid)) % 5) / 4

    full = _run(make(name, sources, seed=11, **params), 10, 0, acc)
    first = make(name, sources, seed=11, **params)
    part = _run(first, 5, 0, acc)
    state = json.loads(json.dumps(first.state_dict()))  # must survive a serialiser round trip
    resumed = make(name, sources, seed=11, **params)
    resumed.load_state_dict(state)
    assert part + _run(resumed, 5, 5, acc) == full


def test_state_from_another_run_is_rejected() -> None:
    state = make("uniform", POOL).state_dict()
    with pytest.raises(ValueError, match="sampler state is for sampler 'uniform'"):
        make("online_filter", POOL).load_state_dict(state)


def test_unknown_names_and_params() -> None:
    with pytest.raises(UnknownNameError, match="unknown sampler 'prioritised'; did you mean 'prioritized'"):
        make("prioritised", POOL)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['flor'\]; valid: .*floor"):
        make("prioritized", POOL, flor=0.1)
    with pytest.raises(ValueError, match=r"task 'arithmetic': unknown parameter\(s\) \['digit'\]"):
        make("uniform", (DataSource(task="arithmetic", params={"digit": 3}),))
    assert {"uniform", "prioritized", "online_filter", "curriculum", "staged"} <= set(SAMPLERS)


def test_eval_sets_are_fixed_and_disjoint_from_training() -> None:
    cfg = EvalConfig(sets=(DataSource(task="arithmetic"), DataSource(path="gsm8k", split="test")), max_prompts=5)
    sets = build_eval_sets(cfg, seed=0)
    assert {k: len(v) for k, v in sets.items()} == {"arithmetic": 5, "gsm8k": 5}
    assert sets == build_eval_sets(cfg, seed=0)
    train_q = {p.question for p in make("uniform", (DataSource(task="arithmetic"),)).next(5)}
    assert not train_q & {p.question for p in sets["arithmetic"]}
    assert sets["arithmetic"][0].prompt_id == "arithmetic/open/eval-s0/0"
