"""ShardedSampler (data/samplers.py) across ranks, simulated with one thread per rank and a barrier-based
``gather`` (what ``all_gather_object`` returns: every rank's object in rank order):

- the ranks' draws, concatenated in rank order, are the single process's draws of the summed sizes, round
  after round, with uneven shares and a rank that only joins a round (DAPO refill rounds);
- pass rates observed on each rank reach every rank's sampler, so the prioritized weights (and every
  state_dict) stay equal to the single process's;
- a state saved on 2 ranks and loaded on 3 (or on 1) continues the single process's sequence exactly.
"""

import threading

import pytest

from reinforced.data.samplers import PrioritizedSampler, ShardedSampler, UniformSampler
from reinforced.data.sources import Source
from reinforced.types import Prompt


class Group:
    """``world`` threads exchanging objects like ``torch.distributed.all_gather_object``."""

    def __init__(self, world: int) -> None:
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world, timeout=10)

    def gather_for(self, rank: int):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return out
        return gather


def _sources():
    pools = {"easy": 7, "hard": 5}
    return [Source(name, weight, pool=[Prompt(prompt_id=f"{name}{i}", question=f"q{i}") for i in range(n)])
            for (name, n), weight in zip(pools.items(), (2.0, 1.0), strict=True)]


def _sampler(kind: str, seed: int = 3):
    if kind == "prioritized":
        return PrioritizedSampler(_sources(), seed, {"floor": 0.1})
    return UniformSampler(_sources(), seed, {"skip_extremes": True})


def _accuracy(prompt_id: str) -> float:
    return (int("".join(c for c in prompt_id if c.isdigit())) % 3) / 2  # a fixed pass rate per prompt: 0, 0.5 or 1


def _rank_rounds(sampler: ShardedSampler, rank: int, shares: list[list[int]], step0: int) -> list[list[str]]:
    """This rank's prompt ids per round; a share of 0 joins the others' round without prompts."""
    out = []
    for i, sizes in enumerate(shares):
        if sizes[rank]:
            ids = [p.prompt_id for p in sampler.next(sizes[rank])]
        else:
            assert sampler.join_round()
            ids = []
        sampler.observe(ids, [_accuracy(p) for p in ids], step0 + i)
        out.append(ids)
    return out


def _run_ranks(samplers: list[ShardedSampler], shares: list[list[int]], step0: int) -> list[list[list[str]]]:
    results: list = [None] * len(samplers)
    errors: list = []

    def work(rank: int) -> None:
        try:
            results[rank] = _rank_rounds(samplers[rank], rank, shares, step0)
        except Exception as err:  # surfaced in the test thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(samplers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _sharded(world: int, kind: str) -> list[ShardedSampler]:
    group = Group(world)
    return [ShardedSampler(_sampler(kind), group.gather_for(r), r) for r in range(world)]


def _single_rounds(single: ShardedSampler, shares: list[list[int]], step0: int) -> list[list[str]]:
    out = []
    for i, sizes in enumerate(shares):
        ids = [p.prompt_id for p in single.next(sum(sizes))]
        single.observe(ids, [_accuracy(p) for p in ids], step0 + i)
        out.append(ids)
    return out


def _one_process(kind: str) -> ShardedSampler:
    return ShardedSampler(_sampler(kind), lambda x: [x], 0)


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_union_of_rank_draws_is_the_single_process_draw(kind):
    shares = [[2, 2], [3, 1], [0, 2], [1, 0], [4, 4], [2, 3]]  # uneven, with join-only rounds
    ranks = _sharded(2, kind)
    per_rank = _run_ranks(ranks, shares, step0=1)
    single = _one_process(kind)
    expected = _single_rounds(single, shares, step0=1)
    for i, want in enumerate(expected):
        assert per_rank[0][i] + per_rank[1][i] == want, f"round {i}"
        assert [len(per_rank[r][i]) for r in range(2)] == shares[i]
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()
    assert ranks[0].prompt_stats.table  # the pass rates were recorded (the weights depend on them)


@pytest.mark.parametrize("world_after", [1, 3])
def test_resume_on_another_world_size_continues_the_sequence(world_after):
    first = [[2, 2], [1, 3], [0, 1]]
    then = [[1] * world_after, [2] * world_after, [3] + [0] * (world_after - 1)]
    single = _one_process("prioritized")
    expected = _single_rounds(single, [[sum(s)] for s in first + then], step0=1)

    before = _sharded(2, "prioritized")
    _run_ranks(before, first, step0=1)
    state = before[0].state_dict()
    after = _sharded(world_after, "prioritized")
    for sampler in after:
        sampler.load_state_dict(state)
    if world_after == 1:
        got = _single_rounds(after[0], then, step0=1 + len(first))
    else:
        per_rank = _run_ranks(after, then, step0=1 + len(first))
        got = [sum((per_rank[r][i] for r in range(world_after)), []) for i in range(len(then))]
    assert got == expected[len(first):]
    assert after[0].state_dict() == single.state_dict()


def test_next_needs_a_positive_share():
    with pytest.raises(ValueError, match="join_round"):
        _one_process("uniform").next(0)
