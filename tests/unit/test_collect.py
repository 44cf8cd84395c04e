"""The loop's collect stage: DAPO dynamic sampling refills the batch with informative groups only."""

from types import SimpleNamespace

import pytest

from reinforced.algorithms import resolve_spec
from reinforced.algorithms.filters import BatchNotFilled
from reinforced.config import load_config
from reinforced.training.distributed import Strategy
from reinforced.training.loop import collect
from reinforced.types import Completion, Prompt, RolloutGroup


class Sampler:
    def __init__(self):
        self.i, self.observed = 0, []

    def next(self, n):
        self.i += n
        return [Prompt(f"p{k}", "q") for k in range(self.i - n, self.i)]

    def observe(self, ids, accuracies, step):
        self.observed += list(ids)

    def stats(self):
        return {}

    def join_round(self):  # one process: no other rank is ever still drawing
        return False


class Engine:
    def generate(self, prompts, params):
        comp = Completion("x", (1, 2), (0.0, 0.0), "stop")
        return [RolloutGroup(p, (comp,) * params.group_size, prompt_ids=(1,)) for p in prompts]


class Rewards:
    """Prompt k: all correct when k % 3 == 0, all wrong when k % 3 == 1, mixed otherwise."""

    def score(self, groups):
        out = []
        for g in groups:
            k = int(g.prompt.prompt_id[1:])
            acc = {0: (1.0,) * 4, 1: (0.0,) * 4}.get(k % 3, (1.0, 0.0, 0.0, 1.0))
            out.append(g.scored(rewards=acc, accuracy=acc))
        return out, {"reward/mean": 0.5, "reward/error_frac": 0.0}


def make_run(preset, overrides=()):
    cfg = load_config(None, ["rollout.group_size=4", "training.num_prompts=3", *overrides])
    spec = resolve_spec(cfg.algorithm.preset if preset is None else preset, cfg.algorithm.overrides)
    return SimpleNamespace(cfg=cfg, spec=spec, sampler=Sampler(), engine=Engine(), rewards=Rewards(),
                           run_dir="runs/x", strategy=Strategy())  # one process


def test_dynamic_sampling_fills_the_batch_with_informative_groups():
    run = make_run("dapo")
    kept, stats = collect(run, step=1)
    assert len(kept) == 3
    assert all(len(set(g.accuracy)) > 1 for g in kept)  # no all-correct / all-wrong group
    assert stats["filter/rounds"] == 3  # one informative prompt per round of 3
    assert stats["filter/missing_groups"] == 0.0
    assert len(run.sampler.observed) == 9  # every scored prompt updates the sampler, kept or not


def test_without_dynamic_sampling_one_round_keeps_everything():
    run = make_run("grpo")
    kept, stats = collect(run, step=1)
    assert len(kept) == 3 and stats["filter/rounds"] == 1


def all_wrong_until(run, prompt_index):
    """Every group is all-wrong until the sampler has handed out ``prompt_index`` prompts; then mixed."""
    score = run.rewards.score

    def scored(groups):
        if run.sampler.i <= prompt_index:
            return [g.scored(rewards=(0.0,) * 4, accuracy=(0.0,) * 4) for g in groups], {"reward/error_frac": 0.0}
        return score(groups)

    run.rewards.score = scored


def test_dynamic_sampling_at_its_cap_raises_by_default_as_verl_does():
    """verl ``recipe/dapo/dapo_ray_trainer.py``: ``if max_num_gen_batches > 0 and num_gen_batches >=
    max_num_gen_batches: raise ValueError(...)``: a short batch is never trained on silently."""
    run = make_run("dapo")
    all_wrong_until(run, 10**9)
    with pytest.raises(BatchNotFilled, match=r"step 1: dynamic sampling kept 0 of 3 prompts after 10 rounds"):
        collect(run, step=1)


def test_dynamic_sampling_max_rounds_zero_samples_until_the_batch_is_full():
    """DAPO Algorithm 1 (arXiv 2503.14476): sample until the buffer holds the batch; max_rounds=0 is no cap."""
    run = make_run("dapo", ["algorithm.dynamic_sampling.max_rounds=0"])
    assert run.spec.dynamic_sampling.max_rounds == 0
    all_wrong_until(run, 36)  # 12 rounds of 3 all-wrong prompts, more than the preset's cap of 10
    kept, stats = collect(run, step=1)
    assert len(kept) == 3 and all(len(set(g.accuracy)) > 1 for g in kept)
    assert stats["filter/rounds"] > 12 and stats["filter/missing_groups"] == 0


def test_dynamic_sampling_partial_policy_trains_on_what_is_there_and_says_so():
    run = make_run("dapo", ["algorithm.dynamic_sampling.max_rounds=2", "algorithm.dynamic_sampling.on_cap=partial"])
    kept, stats = collect(run, step=1)  # one informative prompt per round of 3
    assert len(kept) == 2 and stats["filter/rounds"] == 2
    assert stats["filter/missing_groups"] == 1.0 and stats["filter/kept_groups"] == 2.0
    all_wrong_until(run, 10**9)
    with pytest.raises(BatchNotFilled, match="kept 0 of 3"):  # nothing at all to train on: always an error
        collect(run, step=2)
