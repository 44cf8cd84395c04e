"""Curriculum samplers: easy-to-hard by difficulty or pass rate, and staged curricula.

``curriculum`` (Kimi k1.5, arXiv 2501.12599, sec. 2.3.4 "curriculum sampling"; competence-based
schedule of Platanios et al., NAACL 2019): at step t the sampler draws uniformly among the easiest
ceil(c(t) * K) prompts of each pool, with the competence

    linear:  c(t) = min(1, c0 + (1 - c0) * t / T)
    sqrt:    c(t) = min(1, sqrt(c0^2 + (1 - c0^2) * t / T))
    step:    c(t) = the value of the last ``points`` entry [step, c] with step <= t
    constant c(t) = c0

Difficulty is ``metadata[field]`` (``by: difficulty``) or 1 - pass rate (``by: pass_rate``: the measured
success rate, else ``metadata["pass_rate"]`` as written by ``data filter``, else ``prior``). Procedural
sources without a pool are generated at difficulty d(t) = lo + c(t) * (hi - lo).

``staged`` (Curr-ReFT, arXiv 2503.07065; text-then-multimodal schedules): a list of stages, each a data
mix (``sources: {name: weight}``), a question form and a difficulty, left after ``until_step`` steps in
the stage, or once accuracy reaches ``until_accuracy`` (a held-out set's, given by ``observe_eval``, when
the stage names ``eval``; else the mean training accuracy of the stage's last ``acc_window`` prompts),
whichever comes first. The rule is checked at the start of each ``next`` call, so a stage switch lands
exactly on a step boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from reinforced.data.samplers import BaseSampler, register_sampler
from reinforced.data.sources import Source
from reinforced.data.tasks import FORMS
from reinforced.types import Prompt

SCHEDULES = ("linear", "sqrt", "step", "constant")


def competence(step: int, schedule: str, start: float, steps: int, points: Sequence[Sequence[float]] = ()) -> float:
    """The fraction c(t) in (0, 1] of the pool (easiest first) available at ``step``.

    >>> [round(competence(t, "linear", 0.2, 10), 2) for t in (0, 5, 10, 20)]
    [0.2, 0.6, 1.0, 1.0]
    >>> competence(7, "step", 0.0, 0, [[0, 0.25], [5, 0.5], [10, 1.0]])
    0.5
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown curriculum schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return start
    if schedule == "step":
        if not points:
            raise ValueError("schedule 'step' needs points: [[step, competence], ...]")
        value = float(sorted(points)[0][1])
        for at, c in sorted(points):
            if step >= at:
                value = float(c)
        return value
    progress = min(1.0, step / steps) if steps > 0 else 1.0
    if schedule == "linear":
        return min(1.0, start + (1.0 - start) * progress)
    return min(1.0, math.sqrt(start**2 + (1.0 - start**2) * progress))


@register_sampler
class CurriculumSampler(BaseSampler):
    """Easy to hard: draw among the easiest c(t) fraction of each pool."""

    name = "curriculum"
    PARAMS: Mapping[str, Any] = {"by": "difficulty", "field": "difficulty", "schedule": "linear", "start": 0.2,
                                 "steps": 100, "points": (), "min_difficulty": 0.0, "max_difficulty": 1.0,
                                 "prior": 0.5}

    def __init__(self, sources: Sequence[Source], seed: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(sources, seed, params)
        p = self.params
        if p["by"] not in ("difficulty", "pass_rate"):
            raise ValueError(f"curriculum: unknown 'by' {p['by']!r}; valid: difficulty, pass_rate")
        competence(0, p["schedule"], float(p["start"]), int(p["steps"]), p["points"])  # validates
        if p["by"] == "difficulty":
            for source in self.sources:
                for i, prompt in enumerate(source.pool or ()):
                    if source.difficulty_of(i, p["field"]) is None:
                        raise ValueError(f"curriculum by difficulty: prompt {prompt.prompt_id!r} of source "
                                         f"{source.name!r} has no metadata[{p['field']!r}]; set params.field "
                                         "or use by: pass_rate")
        self.order: list[list[int]] = [[] for _ in self.sources]

    def current_competence(self) -> float:
        p = self.params
        return competence(self.step, p["schedule"], float(p["start"]), int(p["steps"]), p["points"])

    def _key(self, source: Source, i: int) -> float:
        """Difficulty of pool item i (lower is easier)."""
        if self.params["by"] == "difficulty":
            return float(source.difficulty_of(i, self.params["field"]) or 0.0)
        prompt = (source.pool or [])[i]
        rate = self.prompt_stats.success(prompt.prompt_id)
        if rate is None:
            rate = prompt.metadata.get("pass_rate", self.params["prior"])
        return 1.0 - float(rate)

    def _before_draw(self) -> None:
        self.order = [sorted(range(s.size), key=lambda i, s=s: (self._key(s, i), i)) if s.size else []
                      for s in self.sources]

    def pick(self, s: int, taken: set[tuple[int, int]]) -> int:
        size = self.sources[s].size
        if size is None:
            return self.uniform_pick(s)
        window = self.order[s][: max(1, math.ceil(self.current_competence() * size - 1e-9))]  # 1e-9: 0.6*10 is 6.000..1
        free = [i for i in window if (s, i) not in taken] or window
        return self.rng.choice(free)

    def make(self, s: int, item: int) -> Prompt:
        source = self.sources[s]
        if source.pool is not None:
            return source.get(item)
        lo, hi = float(self.params["min_difficulty"]), float(self.params["max_difficulty"])
        return source.get(item, difficulty=lo + self.current_competence() * (hi - lo))

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "sampler/competence": self.current_competence()}


STAGE_KEYS = ("sources", "form", "difficulty", "until_step", "until_accuracy", "eval", "acc_window")


@register_sampler
class StagedSampler(BaseSampler):
    """A list of stages (data mix, question form, difficulty), advanced by steps or by accuracy."""

    name = "staged"
    PARAMS: Mapping[str, Any] = {"stages": ()}

    def __init__(self, sources: Sequence[Source], seed: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(sources, seed, params)
        self.stages = [self._check_stage(i, dict(st)) for i, st in enumerate(self.params["stages"])]
        if not self.stages:
            raise ValueError("sampler 'staged' needs params.stages: a list of {sources, form, until_step, ...}")
        self.stage, self.stage_start = 0, 0
        self.recent_acc: list[float] = []
        self.eval_acc: dict[str, list[float]] = {}  # set name -> [accuracy, step]

    def _check_stage(self, i: int, stage: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(stage) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"stage {i}: unknown key(s) {unknown}; valid: {', '.join(STAGE_KEYS)}")
        names = [s.name for s in self.sources]
        mix = stage.get("sources") or {n: s.weight for n, s in zip(names, self.sources, strict=True)}
        if isinstance(mix, (list, tuple)):
            mix = {n: 1.0 for n in mix}
        bad = sorted(set(mix) - set(names))
        if bad or not any(float(w) > 0 for w in mix.values()):
            raise ValueError(f"stage {i}: unknown or all-zero sources {bad or list(mix)}; valid: {', '.join(names)}")
        form = stage.get("form")
        if form is not None and form not in FORMS:
            raise ValueError(f"stage {i}: unknown question form {form!r}; valid: {', '.join(FORMS)}")
        if form not in (None, "open") and any(self.sources[names.index(n)].task is None for n in mix):
            raise ValueError(f"stage {i}: form {form!r} applies to procedural tasks only, but the stage mixes "
                             f"file sources {[n for n in mix if self.sources[names.index(n)].task is None]}")
        last = i == len(self.params["stages"]) - 1
        if not last and stage.get("until_step") is None and stage.get("until_accuracy") is None:
            raise ValueError(f"stage {i}: give until_step and/or until_accuracy (only the last stage may run on)")
        weights = [float(mix.get(n, 0.0)) for n in names]
        return {**stage, "weights": weights, "acc_window": int(stage.get("acc_window", 16))}

    def source_weights(self) -> list[float]:
        return self.stages[self.stage]["weights"]

    def _done(self, stage: dict[str, Any]) -> bool:
        if stage.get("until_step") is not None and self.step - self.stage_start >= int(stage["until_step"]):
            return True
        threshold = stage.get("until_accuracy")
        if threshold is None:
            return False
        if stage.get("eval") is not None:
            acc, at = self.eval_acc.get(stage["eval"], (None, -1))
            return acc is not None and at >= self.stage_start and acc >= float(threshold)
        window = stage["acc_window"]
        return len(self.recent_acc) >= window and sum(self.recent_acc[-window:]) / window >= float(threshold)

    def _before_draw(self) -> None:
        while self.stage < len(self.stages) - 1 and self._done(self.stages[self.stage]):
            self.stage += 1
            self.stage_start = self.step
            self.recent_acc = []

    def make(self, s: int, item: int) -> Prompt:
        stage = self.stages[self.stage]
        source = self.sources[s]
        if source.task is None:
            return source.get(item)
        return source.get(item, difficulty=stage.get("difficulty"), form=stage.get("form"))

    def observe(self, prompt_ids: Sequence[str], accuracies: Sequence[float], step: int) -> None:
        super().observe(prompt_ids, accuracies, step)
        window = self.stages[self.stage]["acc_window"]
        self.recent_acc = (self.recent_acc + [float(a) for a in accuracies])[-window:]

    def observe_eval(self, set_name: str, accuracy: float, step: int) -> None:
        self.eval_acc[set_name] = [float(accuracy), int(step)]

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "sampler/stage": float(self.stage)}

    def extra_state(self) -> dict[str, Any]:
        return {"stage": self.stage, "stage_start": self.stage_start, "recent_acc": list(self.recent_acc),
                "eval_acc": {k: list(v) for k, v in self.eval_acc.items()}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self.recent_acc = list(state["recent_acc"])
        self.eval_acc = {k: list(v) for k, v in state["eval_acc"].items()}
