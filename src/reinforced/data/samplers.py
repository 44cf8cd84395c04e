"""Prompt samplers: which prompts the model sees each step, checkpointed so a resumed run draws the same.

Every sampler first picks a source of the mixture with probability proportional to its weight, then an
item of that source by its own rule:

- ``uniform``: without replacement within an epoch of each source (a fresh permutation per epoch);
  procedural sources without a pool yield fresh prompts.
- ``prioritized`` (Kimi k1.5, arXiv 2501.12599, sec. 2.3.4): P(i) proportional to max(1 - s_i, floor),
  s_i the prompt's success rate; unseen prompts use ``prior`` as s_i and ``floor`` keeps solved prompts
  revisited now and then. Needs fixed pools (``limit`` on procedural sources).
- ``online_filter``: uniform, skipping prompts whose recent pass rate is exactly 0 or 1 after
  ``min_attempts`` attempts (they give GRPO zero advantage; cf. GRESO, arXiv 2506.02177). Every sampler
  accepts ``skip_extremes: true`` for the same filter on top of its own rule.
- ``curriculum`` and ``staged`` live in ``data/curriculum.py``.

Per-prompt statistics (pool prompts only): attempts, success rate s_i as an EMA
(s <- (1 - alpha) s + alpha * acc, the first observation sets s) or a window mean, and the last step seen.
Within one ``next(n)`` call prompts are distinct when the pool allows. ``observe(ids, acc, step)`` sets the
step the next draw belongs to (step + 1), so rounds of dynamic sampling within a step share it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from reinforced.data.sources import Source, pool_index
from reinforced.registry import Registry
from reinforced.types import Prompt

COMMON_PARAMS: Mapping[str, Any] = {
    "estimator": "ema", "ema_alpha": 0.5, "window": 4, "skip_extremes": False, "min_attempts": 1,
    "max_tries": 8, "revisit_after": None,
}


class Sampler(Protocol):
    def next(self, n: int) -> list[Prompt]: ...
    def observe(self, prompt_ids: Sequence[str], accuracies: Sequence[float], step: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
    def observe_eval(self, set_name: str, accuracy: float, step: int) -> None:
        """Held-out accuracy of eval set ``set_name`` at ``step`` (staged curricula advance on it)."""

    def stats(self) -> dict[str, float]: ...


class PromptStats:
    """attempts, success-rate estimate and last step per prompt id (JSON-serialisable state)."""

    def __init__(self, estimator: str = "ema", ema_alpha: float = 0.5, window: int = 4) -> None:
        if estimator not in ("ema", "window"):
            raise ValueError(f"unknown success estimator {estimator!r}; valid: ema, window")
        if not 0 < ema_alpha <= 1 or window < 1:
            raise ValueError(f"need 0 < ema_alpha <= 1 and window >= 1, got {ema_alpha}, {window}")
        self.estimator, self.alpha, self.window = estimator, float(ema_alpha), int(window)
        self.table: dict[str, dict[str, Any]] = {}

    def update(self, prompt_id: str, accuracy: float, step: int) -> None:
        row = self.table.setdefault(prompt_id, {"n": 0, "s": 0.0, "last": -1, "recent": []})
        row["s"] = accuracy if row["n"] == 0 else (1 - self.alpha) * row["s"] + self.alpha * accuracy
        row["recent"] = (row["recent"] + [float(accuracy)])[-self.window :]
        row["n"] += 1
        row["last"] = int(step)

    def success(self, prompt_id: str) -> float | None:
        """The success estimate s_i, None when never attempted."""
        row = self.table.get(prompt_id)
        if row is None:
            return None
        return float(row["s"]) if self.estimator == "ema" else sum(row["recent"]) / len(row["recent"])

    def attempts(self, prompt_id: str) -> int:
        return int(self.table.get(prompt_id, {}).get("n", 0))

    def last_step(self, prompt_id: str) -> int:
        return int(self.table.get(prompt_id, {}).get("last", -1))


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class BaseSampler:
    """Mixture by weight, per-prompt statistics, the optional extreme-pass-rate filter, and state."""

    name = "base"
    PARAMS: Mapping[str, Any] = {}

    def __init__(self, sources: Sequence[Source], seed: int, params: Mapping[str, Any] | None = None) -> None:
        self.sources = list(sources)
        self.params = self._check_params(dict(params or {}))
        self.rng = random.Random(seed)
        self.step = 0
        self.index = pool_index(self.sources)
        p = self.params
        self.prompt_stats = PromptStats(p["estimator"], p["ema_alpha"], p["window"])
        self.cursor = [0] * len(self.sources)  # next index of each infinite source
        self.perm: list[list[int]] = [[] for _ in self.sources]  # uniform epochs of pools
        self.pos = [0] * len(self.sources)
        self.epoch = [0] * len(self.sources)
        self.counts = {"skipped": 0, "skipped_last": 0, "drawn": 0, "filter_exhausted": 0}

    def _check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        valid = {**COMMON_PARAMS, **self.PARAMS}
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"sampler {self.name!r}: unknown parameter(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return {**valid, **params}

    # -- drawing --------------------------------------------------------------------------------------
    def source_weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def next(self, n: int) -> list[Prompt]:
        """``n`` prompts for the current step."""
        if n < 1:
            raise ValueError(f"next(n) needs n >= 1, got {n}")
        self._before_draw()
        out: list[Prompt] = []
        taken: set[tuple[int, int]] = set()
        self.counts["skipped_last"] = 0
        for _ in range(n):
            out.append(self._draw_one(taken))
        self.counts["drawn"] += n
        return out

    def _draw_one(self, taken: set[tuple[int, int]]) -> Prompt:
        tries = int(self.params["max_tries"])
        for attempt in range(tries):
            s = self.rng.choices(range(len(self.sources)), weights=self.source_weights())[0]
            item = self.pick(s, taken)
            if self.sources[s].pool is not None:
                taken.add((s, item))
            prompt = self.make(s, item)
            if not (self.params["skip_extremes"] and self.is_extreme(prompt.prompt_id)):
                key = f"drawn/{self.sources[s].name}"  # per-source counts for mixture metrics
                self.counts[key] = self.counts.get(key, 0) + 1
                return prompt
            if attempt == tries - 1:  # everything filtered: serve it anyway rather than stall the run
                self.counts["filter_exhausted"] += 1
                return prompt
            self.counts["skipped"] += 1
            self.counts["skipped_last"] += 1
        raise AssertionError("unreachable")

    def pick(self, s: int, taken: set[tuple[int, int]]) -> int:
        """Item index within source ``s`` (subclasses); the default is uniform without replacement."""
        return self.uniform_pick(s)

    def uniform_pick(self, s: int) -> int:
        size = self.sources[s].size
        if size is None:
            self.cursor[s] += 1
            return self.cursor[s] - 1
        if self.pos[s] >= len(self.perm[s]):
            self.perm[s] = list(range(size))
            self.rng.shuffle(self.perm[s])
            self.pos[s] = 0
            self.epoch[s] += 1
        self.pos[s] += 1
        return self.perm[s][self.pos[s] - 1]

    def make(self, s: int, item: int) -> Prompt:
        return self.sources[s].get(item)

    def is_extreme(self, prompt_id: str) -> bool:
        """Recent pass rate exactly 0 or 1 after ``min_attempts`` attempts (and not due a revisit)."""
        if self.prompt_stats.attempts(prompt_id) < int(self.params["min_attempts"]):
            return False
        revisit = self.params["revisit_after"]
        if revisit is not None and self.step - self.prompt_stats.last_step(prompt_id) >= int(revisit):
            return False
        return self.prompt_stats.success(prompt_id) in (0.0, 1.0)

    def _before_draw(self) -> None:
        """Hook run at the start of each ``next`` call (curricula update their schedule here)."""

    # -- feedback -------------------------------------------------------------------------------------
    def observe(self, prompt_ids: Sequence[str], accuracies: Sequence[float], step: int) -> None:
        """Record each prompt's mean accuracy over its group at ``step``."""
        if len(prompt_ids) != len(accuracies):
            raise ValueError(f"observe: {len(prompt_ids)} prompt ids but {len(accuracies)} accuracies")
        for pid, acc in zip(prompt_ids, accuracies, strict=True):
            if pid in self.index:
                self.prompt_stats.update(pid, float(acc), step)
        self.step = max(self.step, int(step) + 1)

    def observe_eval(self, set_name: str, accuracy: float, step: int) -> None:
        """Held-out accuracy of eval set ``set_name`` at ``step`` (staged curricula advance on it)."""

    def stats(self) -> dict[str, float]:
        """Sampler metrics for the run log (``sampler/...``)."""
        pool = len(self.index)
        seen = sum(1 for pid in self.index if self.prompt_stats.attempts(pid) > 0)
        out = {f"sampler/{k}": float(v) for k, v in self.counts.items()}
        if pool:
            out["sampler/seen_frac"] = seen / pool
        return out

    # -- checkpoint -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.name, "sources": [s.name for s in self.sources], "rng": rng_state(self.rng),
                "step": self.step, "cursor": list(self.cursor), "perm": [list(p) for p in self.perm],
                "pos": list(self.pos), "epoch": list(self.epoch), "counts": dict(self.counts),
                "prompt_stats": {k: dict(v, recent=list(v["recent"])) for k, v in self.prompt_stats.table.items()},
                "extra": self.extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = [s.name for s in self.sources]
        if state.get("sampler") != self.name or list(state.get("sources", ())) != names:
            raise ValueError(f"sampler state is for sampler {state.get('sampler')!r} over sources "
                             f"{state.get('sources')}, but this run has {self.name!r} over {names}")
        set_rng_state(self.rng, state["rng"])
        self.step = int(state["step"])
        self.cursor, self.pos, self.epoch = list(state["cursor"]), list(state["pos"]), list(state["epoch"])
        self.perm = [list(p) for p in state["perm"]]
        self.counts = dict(state["counts"])
        self.prompt_stats.table = {k: dict(v, recent=list(v["recent"])) for k, v in state["prompt_stats"].items()}
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Subclass state (curriculum stage, ...)."""


SAMPLERS: Registry[type[BaseSampler]] = Registry("sampler")


def register_sampler(cls: type[BaseSampler]) -> type[BaseSampler]:
    return SAMPLERS.add(cls.name, cls)


@register_sampler
class UniformSampler(BaseSampler):
    """Uniform without replacement per epoch of each source."""

    name = "uniform"


@register_sampler
class OnlineFilterSampler(BaseSampler):
    """Uniform, skipping prompts whose recent pass rate is 0 or 1 (``skip_extremes`` on by default)."""

    name = "online_filter"

    def _check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return super()._check_params({"skip_extremes": True, **params})


@register_sampler
class PrioritizedSampler(BaseSampler):
    """P(i) proportional to max(1 - s_i, floor); unseen prompts count as s_i = prior."""

    name = "prioritized"
    PARAMS: Mapping[str, Any] = {"floor": 0.05, "prior": 0.5}

    def __init__(self, sources: Sequence[Source], seed: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(sources, seed, params)
        infinite = [s.name for s in self.sources if s.pool is None]
        if infinite:
            raise ValueError(f"sampler 'prioritized' needs fixed pools, but {infinite} are infinite procedural "
                             f"streams: give those sources a 'limit'")
        if not 0 < float(self.params["floor"]) <= 1 or not 0 <= float(self.params["prior"]) <= 1:
            raise ValueError(f"prioritized: need 0 < floor <= 1 and 0 <= prior <= 1, got {self.params}")

    def weights(self, s: int) -> list[float]:
        """Unnormalised P(i) over source ``s``'s pool."""
        floor, prior = float(self.params["floor"]), float(self.params["prior"])
        out = []
        for prompt in self.sources[s].pool or ():
            rate = self.prompt_stats.success(prompt.prompt_id)
            out.append(max(1.0 - (prior if rate is None else rate), floor))
        return out

    def pick(self, s: int, taken: set[tuple[int, int]]) -> int:
        w = self.weights(s)
        free = [x if (s, i) not in taken else 0.0 for i, x in enumerate(w)]
        return self.rng.choices(range(len(w)), weights=free if sum(free) > 0 else w)[0]


def build_sampler_from_sources(name: str, sources: Sequence[Source], seed: int,
                               params: Mapping[str, Any] | None = None) -> BaseSampler:
    return SAMPLERS[name](sources, seed, params)


class ShardedSampler:
    """This rank's share of a sampler in data-parallel training (``training/distributed.py``).

    Every rank holds the same full sampler. Each round the ranks' request sizes are gathered; the full
    sampler draws their sum once, in rank order, and each rank takes its own slice. ``observe`` gathers every
    rank's pass rates before updating, so the full sampler's state is the same on every rank and equals what
    one process drawing the global list would hold: a checkpoint of it resumes exactly on any world size.
    ``gather(obj)`` returns every rank's ``obj`` in rank order (the identity list ``[obj]`` on one process);
    every rank must call ``next`` / ``observe`` / ``join_round`` the same number of times in the same order.

    >>> from reinforced.data.sources import Source
    >>> from reinforced.types import Prompt
    >>> pool = [Prompt(prompt_id=f"p{i}", question="q") for i in range(8)]
    >>> one = ShardedSampler(UniformSampler([Source("s", 1.0, pool=pool)], seed=0), lambda x: [x], rank=0)
    >>> [p.prompt_id for p in one.next(3)]
    ['p7', 'p5', 'p1']
    """

    def __init__(self, sampler: BaseSampler, gather: Callable[[Any], list[Any]], rank: int) -> None:
        self.sampler, self.gather, self.rank = sampler, gather, rank

    def __getattr__(self, name: str) -> Any:  # sources, name, ... of the full sampler
        return getattr(self.sampler, name)

    def next(self, n: int) -> list[Prompt]:
        """This rank's ``n`` prompts of a round (``n`` may differ between ranks)."""
        if n < 1:
            raise ValueError(f"ShardedSampler.next needs n >= 1, got {n}; a rank whose share is full takes "
                             f"part in the others' rounds with join_round()")
        return self._round(n)

    def join_round(self) -> bool:
        """Take part in the other ranks' round with no prompts of our own. False (nothing drawn) when no
        rank asked for prompts: every rank is done. After True, call ``observe([], [], step)`` as they do."""
        return bool(self._round(0, joining=True) is not None)

    def _round(self, n: int, joining: bool = False) -> list[Prompt] | None:
        sizes = self.gather(n)
        total = sum(sizes)
        if total == 0:
            return None
        drawn = self.sampler.next(total)
        start = sum(sizes[: self.rank])
        return drawn[start : start + n] if not joining else []

    def observe(self, prompt_ids: Sequence[str], accuracies: Sequence[float], step: int) -> None:
        """Every rank's pass rates, in rank order, go to the full sampler."""
        parts = self.gather((list(prompt_ids), [float(a) for a in accuracies]))
        self.sampler.observe([p for ids, _ in parts for p in ids], [a for _, accs in parts for a in accs], step)

    def observe_eval(self, set_name: str, accuracy: float, step: int) -> None:
        self.sampler.observe_eval(set_name, accuracy, step)

    def stats(self) -> dict[str, float]:
        return self.sampler.stats()

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)
