"""Reward composition: r_i = sum_k w_k * s_k(y_i), accuracy_i = mean of the accuracy terms' scores.

A term is (name, weight, params, accuracy), shaped like ``config.RewardTerm`` (plain dicts accepted).
``Prompt.reward_set`` selects a named composition from ``sets`` (None: the default
``terms``). With ``gate_accuracy_on_format`` the accuracy terms score 0 (in the reward and in accuracy)
unless the ``format`` reward is satisfied (score > 0.5) - Vision-R1's "format and answer" rule
(arXiv 2503.06749). Context parameters (``num_tokens``, ``correct``, ``group_*``; see base.py) are
filled here; rewards that need ``correct`` run after the accuracy terms.

Failures (the policy). A term's result is one of: a finite number (bools and 0-d tensors / numpy
scalars are converted); "not applicable" (score None, no ``info["error"]``: the term contributes 0);
or a failure - an exception, a time-out, a non-number, NaN or inf (score None with ``info["error"]``).
A failure is never scored as a wrong answer. It counts in ``reward/errors`` and is logged with the
reward's name and the sample (``prompt_id#index``). A failed term with non-zero weight makes the
sample's reward NaN; a failed accuracy term (or a failed format check under the gate) makes its
accuracy NaN, and the terms that need ``correct`` are then not run for it. NaN samples are left out of
their group's statistics by every advantage estimator and get advantage 0 (algorithms/advantages.py),
leave the loss mask, and are left out of accuracy, pass rates and pass@k (``types.valid``);
``group_correct`` carries the NaN. A group with fewer than two valid samples gets advantage 0.

User rewards (custom.py): a term's name may be a Python callable registered by ``Trainer`` or a reference
``file.py:function`` / ``module:function``; a batch-level one (TRL's ``f(completions, prompts, **columns)``)
runs as one worker job per batch and parameter set, with the context parameters it declares as lists.

Process rewards: each term's ``RewardResult.steps`` are scaled by the term's weight and returned in
``step_rewards`` (sorted by start); the trainer maps character spans to tokens (``steps.py``).

Reward-hacking detectors, logged as metrics (``hacking/*``): empty answers, tag spam (a tag repeated),
identical completions within a group, the largest share of |weighted score| taken by one term, and
the fraction of within-group pairs whose reward order contradicts their accuracy order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reinforced.rewards.base import CONTEXT_PARAMS, NEEDS_ACCURACY, context_params, extract_answer
from reinforced.rewards.custom import BatchReward, check_term
from reinforced.rewards.worker import BatchJob, Job, RewardWorker, check_result
from reinforced.types import Prompt, RewardResult, RolloutGroup, StepScore, valid

log = logging.getLogger(__name__)
_GATE_THRESHOLD = 0.5
_MAX_LOGGED = 10  # error lines per batch; the rest are summarised in one line
_SKIPPED = "skipped"  # info key of a term not run because the sample's accuracy failed
_SPAM_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class Term:
    """One weighted reward in a composition."""

    name: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)
    accuracy: bool = False
    scored: bool = True  # False: computed only for the format gate, not added to the reward

    @classmethod
    def of(cls, term: Any) -> Term:
        """From a ``config.RewardTerm``, a dict or a Term."""
        if isinstance(term, Term):
            return term
        get = term.get if isinstance(term, Mapping) else lambda k, d=None: getattr(term, k, d)
        unknown = set(term) - {"name", "weight", "params", "accuracy"} if isinstance(term, Mapping) else set()
        if unknown or get("name") is None:
            raise ValueError(f"bad reward term {term!r}: keys are name, weight, params, accuracy")
        return cls(str(get("name")), float(get("weight", 1.0)), dict(get("params", {}) or {}), bool(get("accuracy", False)))


class RewardComposer:
    """Scores rollout groups with weighted reward terms; see the module docstring."""

    def __init__(
        self,
        terms: Sequence[Any],
        sets: Mapping[str, Sequence[Any]] | None = None,
        timeout_s: float = 5.0,
        gate_accuracy_on_format: bool = False,
        *,
        use_worker: bool = True,
        step_terms_in_reward: bool = True,
    ) -> None:
        self.sets: dict[str, tuple[Term, ...]] = {}
        self.fns: dict[str, Any] = {}  # term name -> the reward it resolves to (custom.resolve_reward)
        for set_name, set_terms in {"default": terms, **dict(sets or {})}.items():
            self.sets[set_name] = self._build_set(set_name, set_terms, gate_accuracy_on_format, self.fns)
        self.timeout_s = timeout_s
        self.gate = gate_accuracy_on_format
        # False: a term that returns step scores counts through them only (the trainer's process advantage),
        # not a second time in the composed reward R (algorithm.process_mode, set by training.setup).
        self.step_terms_in_reward = step_terms_in_reward
        # in-process mode has no time limit: for debugging and for callers that already isolate
        self.worker = RewardWorker(timeout_s) if use_worker else None

    @staticmethod
    def _build_set(set_name: str, raw: Sequence[Any], gate: bool, fns: dict[str, Any]) -> tuple[Term, ...]:
        built = [Term.of(t) for t in raw]
        if not built:
            raise ValueError(f"reward set {set_name!r} has no terms")
        seen: set[str] = set()
        for term in built:
            try:
                fns[term.name] = check_term(term.name, term.params)
            except (KeyError, ValueError) as err:
                raise ValueError(f"reward set {set_name!r}: {err}") from None
            if term.name in seen:
                raise ValueError(f"reward set {set_name!r} names {term.name!r} twice")
            seen.add(term.name)
        if gate and "format" not in seen:  # the gate needs the format verdict even if it is not rewarded
            fns["format"] = check_term("format", {})
            built.append(Term("format", 0.0, {}, False, scored=False))
        return tuple(built)

    def close(self) -> None:
        """Stop the worker process."""
        if self.worker is not None:
            self.worker.close()

    def __enter__(self) -> RewardComposer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def terms_for(self, prompt: Prompt) -> tuple[Term, ...]:
        """The terms that score ``prompt`` (its ``reward_set``, else the default)."""
        name = prompt.reward_set or "default"
        if name not in self.sets:
            raise ValueError(
                f"prompt {prompt.prompt_id!r} names reward set {name!r}; valid: {', '.join(sorted(self.sets))}"
            )
        return self.sets[name]

    def _run(self, jobs: list[Job], prompts: list[Prompt]) -> list[RewardResult]:
        """Results of ``jobs`` in order. Per-sample jobs and batch-level user rewards (one ``BatchJob`` per
        reward and params) run in the worker; judges with ``fn.batch`` batch in-process with their own
        time-outs (judge.py)."""
        out: dict[int, RewardResult] = {}
        in_process = [i for i, j in enumerate(jobs) if getattr(j.fn, "batch", None) is not None]
        plain = [i for i, j in enumerate(jobs)
                 if getattr(j.fn, "batch", None) is None and not isinstance(j.fn, BatchReward)]
        units: list[Job | BatchJob] = [jobs[i] for i in plain]
        owners: list[Any] = list(plain)
        for idx in _buckets(jobs, lambda j: isinstance(j.fn, BatchReward), per_sample=CONTEXT_PARAMS):
            first = jobs[idx[0]]
            units.append(BatchJob(first.fn, tuple(jobs[i].completion for i in idx),
                                  tuple(jobs[i].prompt_index for i in idx), _batch_params(jobs, idx)))
            owners.append(idx)
        if self.worker is None:
            results = [u.run(prompts) for u in units]
        else:
            results = self.worker.run(units, prompts) if units else []
        for owner, result in zip(owners, results, strict=True):
            out.update(zip(owner, result, strict=True) if isinstance(owner, list) else [(owner, result)])
        out.update(_run_batched([jobs[i] for i in in_process], prompts, in_process))
        return [out[i] for i in range(len(jobs))]

    def _jobs(self, groups: Sequence[RolloutGroup], phase2: bool, acc: list[list[float]]) -> tuple[list[Job], list[tuple[int, int, int]]]:
        jobs: list[Job] = []
        where: list[tuple[int, int, int]] = []  # (group, term, completion)
        for gi, group in enumerate(groups):
            lengths = tuple(c.num_tokens for c in group.completions)
            for ti, term in enumerate(self.terms_for(group.prompt)):
                fn = self.fns[term.name]
                ctx_names = context_params(fn)
                if bool(NEEDS_ACCURACY & set(ctx_names)) != phase2:
                    continue
                for ci, comp in enumerate(group.completions):
                    if phase2 and math.isnan(acc[gi][ci]):
                        continue  # its accuracy failed: nothing to shape (the slot says so, see score())
                    ctx = {"num_tokens": comp.num_tokens, "truncated": comp.truncated,
                           "group_num_tokens": lengths,
                           "correct": acc[gi][ci] if phase2 else None,
                           "group_correct": tuple(acc[gi]) if phase2 else None}
                    params = {**term.params, **{k: ctx[k] for k in ctx_names}}
                    jobs.append(Job(fn, comp.text, gi, params))
                    where.append((gi, ti, ci))
        return jobs, where

    def score(self, groups: Sequence[RolloutGroup]) -> tuple[list[RolloutGroup], dict[str, float]]:
        """Fill rewards [G], accuracy [G], components, step_rewards and reward_errors of every group."""
        prompts = [g.prompt for g in groups]
        skipped = RewardResult(score=None, info={_SKIPPED: "the sample's accuracy failed"})
        table: list[list[list[Any]]] = [[[skipped] * g.group_size for _ in self.terms_for(g.prompt)] for g in groups]
        acc: list[list[float]] = [[0.0] * g.group_size for g in groups]
        for phase2 in (False, True):
            jobs, where = self._jobs(groups, phase2, acc)
            for (gi, ti, ci), result in zip(where, self._run(jobs, prompts), strict=True):
                name, sample = self.terms_for(prompts[gi])[ti].name, f"{prompts[gi].prompt_id}#{ci}"
                table[gi][ti][ci] = check_result(result, name, sample)
            if not phase2:
                acc = [self._accuracy(g, table[gi]) for gi, g in enumerate(groups)]
        _log_errors(groups, table, [self.terms_for(p) for p in prompts])
        scored = [self._assemble(g, table[gi], acc[gi]) for gi, g in enumerate(groups)]
        return scored, batch_stats(scored, table, [self.terms_for(p) for p in prompts])

    def _gate_ok(self, terms: tuple[Term, ...], results: list[list[Any]], ci: int) -> bool | None:
        """The format gate of sample ``ci``: True (passed or no gate), False, None (the check failed)."""
        if not self.gate:
            return True
        ti = next(i for i, t in enumerate(terms) if t.name == "format")
        if failed(results[ti][ci]):
            return None
        score = results[ti][ci].score
        return score is not None and score > _GATE_THRESHOLD

    def _accuracy(self, group: RolloutGroup, results: list[list[Any]]) -> list[float]:
        """Mean of the accuracy terms per sample [G]; 0 when gated off, NaN when a verifier failed."""
        terms = self.terms_for(group.prompt)
        idx = [i for i, t in enumerate(terms) if t.accuracy]
        out = []
        for ci in range(group.group_size):
            gate = self._gate_ok(terms, results, ci)
            if not idx or gate is False:
                out.append(0.0)
            elif gate is None or any(failed(results[i][ci]) for i in idx):
                out.append(math.nan)
            else:  # a verifier that does not apply (None without error) gives no credit
                out.append(sum(results[i][ci].score or 0.0 for i in idx) / len(idx))
        return out

    def _assemble(self, group: RolloutGroup, results: list[list[Any]], acc: list[float]) -> RolloutGroup:
        terms = self.terms_for(group.prompt)
        rewards, steps, errors, texts = [], [], 0, []
        for ci in range(group.group_size):
            gate = self._gate_ok(terms, results, ci)
            total, mine = 0.0, []
            texts.append(tuple(f"{t.name}: {res[ci].info['error']}" for t, res in zip(terms, results, strict=True)
                               if is_error(res[ci])))
            for term, res in zip(terms, results, strict=True):
                r: RewardResult = res[ci]
                errors += int(is_error(r))
                if not term.scored or term.weight == 0 or (term.accuracy and gate is False):
                    continue
                if failed(r) or (term.accuracy and gate is None):
                    total = math.nan  # a failure is not a wrong answer: the sample leaves its group's stats
                    continue
                if r.score is None:  # not applicable
                    continue
                mine += [StepScore(s.start, s.end, term.weight * s.score) for s in r.steps]
                if r.steps and not self.step_terms_in_reward:
                    continue
                total += term.weight * r.score
            rewards.append(total)
            steps.append(tuple(sorted(mine, key=lambda s: (s.start, s.end))))
        components = {t.name: tuple(r.score for r in res) for t, res in zip(terms, results, strict=True) if t.scored}
        return group.scored(rewards=tuple(rewards), accuracy=tuple(acc), components=components,
                            step_rewards=tuple(steps), reward_errors=errors, error_texts=tuple(texts))


def _buckets(jobs: Sequence[Job], keep: Any, per_sample: Sequence[str] = ()) -> list[list[int]]:
    """Indices of the jobs that ``keep`` selects, grouped by (reward, params but the ``per_sample`` ones):
    one batch call each."""
    buckets: dict[tuple[int, str], list[int]] = {}
    for i, j in enumerate(jobs):
        if keep(j):
            shared = sorted((k, v) for k, v in j.params.items() if k not in per_sample)
            buckets.setdefault((id(j.fn), repr(shared)), []).append(i)
    return list(buckets.values())


def _batch_params(jobs: Sequence[Job], idx: Sequence[int]) -> dict[str, Any]:
    """A batch call's params: the term's own, and each context parameter as a list over the batch's
    completions (``correct=[1.0, 0.0, ...]``), as TRL passes per-completion values."""
    params = dict(jobs[idx[0]].params)
    for key in CONTEXT_PARAMS:
        if key in params:
            params[key] = [jobs[i].params[key] for i in idx]
    return params


def _run_batched(jobs: list[Job], prompts: list[Prompt], positions: list[int]) -> list[tuple[int, RewardResult]]:
    """Jobs of batch-capable rewards (``fn.batch``), one call per (reward, params); results keyed by
    ``positions[i]`` for ``jobs[i]``."""
    out = []
    for idx in _buckets(jobs, lambda j: True):
        fn, params = jobs[idx[0]].fn, jobs[idx[0]].params
        try:
            results = fn.batch([jobs[i].completion for i in idx], [prompts[jobs[i].prompt_index] for i in idx], **params)  # type: ignore[attr-defined]
        except Exception as err:  # a judge outage scores None for its jobs, it does not stop training
            results = [RewardResult(score=None, info={"error": f"{type(err).__name__}: {err}"})] * len(idx)
        if not isinstance(results, Sequence) or len(results) != len(idx):
            got = f"{len(results)} results" if isinstance(results, Sequence) else type(results).__name__
            error = f"{getattr(fn, '__name__', 'reward')}.batch returned {got} for {len(idx)} completions"
            results = [RewardResult(score=None, info={"error": error})] * len(idx)
        out += list(zip([positions[i] for i in idx], results, strict=True))
    return out


def is_error(result: RewardResult) -> bool:
    """The reward raised, timed out, or returned something that is not a finite number."""
    return result.score is None and "error" in result.info


def failed(result: RewardResult) -> bool:
    """An error, or not run because the sample's accuracy failed: no score to use either way."""
    return result.score is None and ("error" in result.info or _SKIPPED in result.info)


def _log_errors(groups: Sequence[RolloutGroup], table: Sequence[Sequence[Sequence[RewardResult]]],
                terms: Sequence[Sequence[Term]]) -> None:
    """One warning per failed reward call (reward name, sample ``prompt_id#index``, error), capped per batch."""
    lines = [f"reward {term.name!r} failed on sample {g.prompt.prompt_id}#{ci}: {r.info['error']}"
             for g, group_terms, results in zip(groups, terms, table, strict=True)
             for term, res in zip(group_terms, results, strict=True)
             for ci, r in enumerate(res) if is_error(r)]
    for line in lines[:_MAX_LOGGED]:
        log.warning(line)
    if len(lines) > _MAX_LOGGED:
        log.warning("... and %d more reward failures in this batch", len(lines) - _MAX_LOGGED)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def batch_stats(groups: Sequence[RolloutGroup], table: Sequence[Sequence[Sequence[Any]]],
                terms: Sequence[Sequence[Term]]) -> dict[str, float]:
    """reward/*, accuracy/mean and hacking/* metrics of a scored batch (see the module docstring)."""
    rewards = valid([r for g in groups for r in (g.rewards or ())])  # failed samples are not zeros
    accs = valid([a for g in groups for a in (g.accuracy or ())])
    mean = _mean(rewards)
    stats = {"reward/mean": mean, "reward/std": math.sqrt(_mean([(r - mean) ** 2 for r in rewards])),
             "accuracy/mean": _mean(accs)}
    per_term: dict[str, list[float]] = {}
    share: dict[str, float] = {}
    calls = errors = 0
    for group_terms, results in zip(terms, table, strict=True):
        for term, res in zip(group_terms, results, strict=True):
            for r in res:
                calls += 1
                errors += int(is_error(r))
                if r.score is not None and term.scored:
                    per_term.setdefault(term.name, []).append(r.score)
                    share[term.name] = share.get(term.name, 0.0) + abs(term.weight * r.score)
    stats.update({f"reward/{k}": _mean(v) for k, v in sorted(per_term.items())})
    stats["reward/errors"] = float(errors)
    stats["reward/error_frac"] = errors / calls if calls else 0.0
    stats.update(hacking_stats(groups, share))
    return stats


def hacking_stats(groups: Sequence[RolloutGroup], share: Mapping[str, float]) -> dict[str, float]:
    """Reward-hacking detectors over a scored batch (fractions in [0, 1]).

    ``hacking/acc_reward_discordance``: over within-group pairs with different accuracy, the fraction
    whose reward order is the opposite (shaping terms overpowering correctness).
    """
    texts = [c.text for g in groups for c in g.completions]
    n = max(len(texts), 1)
    empty = sum(1 for t in texts if not (extract_answer(t) or "").strip())
    spam = sum(1 for t in texts if any(t.count(tag) > 1 for tag in _SPAM_TAGS))
    dup = sum(g.group_size - len({c.text for c in g.completions}) for g in groups)
    pairs = discordant = 0
    for g in groups:
        r, a = g.rewards or (), g.accuracy or ()
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                if a[i] != a[j] and math.isfinite(a[i] + a[j] + r[i] + r[j]):
                    pairs += 1
                    discordant += int((a[i] - a[j]) * (r[i] - r[j]) < 0)
    total = sum(share.values())
    return {
        "hacking/empty_answer_frac": empty / n,
        "hacking/tag_spam_frac": spam / n,
        "hacking/identical_frac": dup / n,
        "hacking/dominant_share": max(share.values()) / total if total > 0 and len(share) > 1 else 0.0,
        "hacking/acc_reward_discordance": discordant / pairs if pairs else 0.0,
    }
