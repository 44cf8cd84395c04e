"""What a claim is (data), how one run is measured, and the agree / disagree / inconclusive rule.

A claim is a statement from a paper that users choose an algorithm by ("clip-higher keeps entropy from
collapsing"). Here it is a controlled experiment: a control arm and one or more treatment arms that differ from it
in one knob (config overrides on a shared base config), each run over the same seeds. For each seed s and
measure m the paired difference ``d_s = m(treatment, s) - m(control, s)`` is taken (same seed: same data order,
same initial weights); the effect is their mean, its spread the sample standard deviation, and its 95 %
interval Student's t over seeds (``mean +- t_{0.975, n-1} sd / sqrt(n)``). The decision:

- agree: the interval excludes 0 and the mean has the sign the paper predicts;
- disagree: the interval excludes 0 and the mean has the other sign;
- inconclusive: the interval holds 0, or fewer than two seeds have the measure.

With three seeds the t factor is 4.30, so only a consistent effect decides; an honest "inconclusive" is a
valid outcome. No library is used: the t quantiles of small samples are a table below (scipy is not a
dependency of the package; the values are the standard two-sided 95 % quantiles).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["agree", "disagree", "inconclusive"]

# t_{0.975, df} for df = 1..30 (two-sided 95 %); beyond 30 the normal 1.96 is within 4 %.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


@dataclass(frozen=True)
class Measure:
    """One number per run, read from its metrics.jsonl rows.

    ``reduce``: ``final`` (the last row holding ``key``), ``mean`` (all rows holding it), ``tail_mean`` (the
    last half of them: the regime after the knob has acted), ``sum`` (all rows), ``gain`` (last minus first:
    held-out accuracy after minus before). ``per``: divide by the sum of this key over all rows (a cost, e.g.
    prompts drawn). ``stage``: only rows of this pipeline stage (``stage_name`` field); None: all rows.
    ``direction``: the sign of treatment - control the paper predicts (+1 larger, -1 smaller).
    """

    key: str
    label: str
    direction: Literal[1, -1]
    reduce: Literal["final", "mean", "tail_mean", "sum", "gain"] = "tail_mean"
    per: str | None = None
    stage: str | None = None

    @property
    def name(self) -> str:
        """Unique within a claim: ``key``, ``key:reduce`` and ``/per`` as needed."""
        return f"{self.key}:{self.reduce}" + (f"/{self.per}" if self.per else "")

    def of(self, rows: Sequence[Mapping[str, Any]]) -> float | None:
        """The measure of one run's rows (None when no row holds the key).

        >>> rows = [{"step": s, "a": a} for s, a in enumerate([1.0, 2.0, 4.0, 6.0])] + [{"step": 9, "b": 0.0}]
        >>> Measure("a", "a", 1, "tail_mean").of(rows)
        5.0
        >>> rows = [{"step": 0, "acc": .1}, {"step": 1, "n": 4}, {"step": 2, "n": 6}, {"step": 2, "acc": .6}]
        >>> Measure("acc", "gain per prompt", 1, "gain", per="n").of(rows)
        0.05
        """
        values = [v for _, v in self.series(rows)]
        if not values:
            return None
        value = _reduce(values, self.reduce)
        if self.per is not None:
            cost = sum(float(r[self.per]) for r in rows if r.get(self.per) is not None)
            return value / cost if cost else None
        return value

    def series(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
        """(step, value) of every row holding the key (the plotted curve)."""
        return [(int(r["step"]), float(r[self.key])) for r in rows if r.get(self.key) is not None
                and (self.stage is None or r.get("stage_name") == self.stage)]


def _reduce(values: Sequence[float], how: str) -> float:
    if how == "final":
        return values[-1]
    if how == "gain":
        return values[-1] - values[0]
    if how == "sum":
        return sum(values)
    if how == "tail_mean":
        values = values[len(values) // 2:]
    return sum(values) / len(values)


@dataclass(frozen=True)
class Arm:
    """One setting of the knob: ``overrides`` (``key=value``, as on the command line) on the claim's base;
    ``quick`` are extra overrides of this arm under ``--quick`` (e.g. a shorter stage list)."""

    name: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A paper's statement and the small experiment that tests it.

    ``config``: a packaged recipe or YAML file the arms start from (None: config.py's defaults); ``base``:
    overrides shared by every arm; ``quick``: overrides applied under ``--quick`` (fewer steps); ``arms[0]``
    is the control, the rest are treatments compared with it; ``regime``: how the model was brought into the
    regime where the knob can act (the README's claims section quotes it).
    """

    name: str
    paper: str
    arxiv: str
    statement: str
    source: str
    arms: tuple[Arm, ...]
    measures: tuple[Measure, ...]
    config: str | None = None
    base: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    quick_seeds: tuple[int, ...] = (0, 1, 2)
    regime: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"claim {self.name!r}: needs a control and at least one treatment arm with distinct "
                             f"names, got {names}")
        if not self.measures:
            raise ValueError(f"claim {self.name!r}: needs at least one measure")
        if len({m.name for m in self.measures}) != len(self.measures):
            raise ValueError(f"claim {self.name!r}: two measures with the same key, reduce and per")

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def treatments(self) -> tuple[Arm, ...]:
        return self.arms[1:]


@dataclass(frozen=True)
class Effect:
    """Treatment - control of one measure over paired seeds, and the decision."""

    mean: float
    sd: float
    low: float
    high: float
    num_seeds: int
    verdict: Verdict


def decide(diffs: Sequence[float], direction: int) -> Effect:
    """The effect of paired differences ``diffs`` (one per seed) and the verdict against ``direction``.

    >>> decide([0.3, 0.5, 0.4], +1).verdict, decide([0.3, 0.5, 0.4], -1).verdict, decide([0.5, -0.4, 0.1], 1).verdict
    ('agree', 'disagree', 'inconclusive')
    """
    diffs = [d for d in diffs if d is not None and math.isfinite(d)]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return Effect(mean, math.nan, math.nan, math.nan, n, "inconclusive")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > 0 or high < 0:
        verdict: Verdict = "agree" if (mean > 0) == (direction > 0) else "disagree"
    else:
        verdict = "inconclusive"
    return Effect(mean, sd, low, high, n, verdict)
