"""Run reward functions under a time limit in a persistent worker process.

A reward parses model text; a pathological input can make a parser (or SymPy inside Math-Verify) run
for minutes. Rewards therefore run in one long-lived child process fed a whole batch per message; the
parent waits at most ``timeout_s`` for each result. A job that overruns is scored None with
``info["error"] = "timed out ..."``, the child is killed and a fresh one continues with the rest of the
batch. Exceptions inside a reward become score None with the error text. The child is started with
``forkserver`` (a clean interpreter that imports ``reinforced.rewards`` once; respawns are cheap forks of
it) so no trainer threads or CUDA state are inherited. Math-Verify's own signal-based time-outs only work
in a main thread, so they are disabled in the rewards and the limit is enforced here, from outside.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import numbers
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reinforced.types import Prompt, RewardResult, StepScore

_STARTUP_S = 120.0


@dataclass(frozen=True)
class Job:
    """One reward call: ``fn(completion, prompts[prompt_index], **params)``."""

    fn: Callable[..., RewardResult]
    completion: str
    prompt_index: int
    params: dict[str, Any] = field(default_factory=dict)


def call_safely(fn: Callable[..., RewardResult], completion: str, prompt: Prompt, params: dict[str, Any]) -> RewardResult:
    """Call a reward; an exception or a wrong return type becomes score None with the error in info."""
    try:
        result = fn(completion, prompt, **params)
    except Exception as err:  # any failure of a reward on model text must not kill the run
        last = traceback.extract_tb(err.__traceback__)[-1]
        return RewardResult(score=None, info={"error": f"{type(err).__name__}: {err} ({last.name}:{last.lineno})"})
    if not isinstance(result, RewardResult):
        return RewardResult(score=None, info={"error": f"reward returned {type(result).__name__}, not RewardResult"})
    return result


def as_score(value: Any) -> float | None:
    """A reward's score as a float: numbers and bools pass, a 0-d tensor or numpy scalar is converted;
    anything else (a string, a list, a tensor with elements) gives None.

    >>> import torch
    >>> as_score(True), as_score(torch.tensor(0.5)), as_score("1.0"), as_score(torch.ones(2))
    (1.0, 0.5, None, None)
    """
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars, Fraction
        return float(value)
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        item = value.item()
        return float(item) if isinstance(item, numbers.Real) else None
    return None


def check_result(result: RewardResult, name: str, sample: str) -> RewardResult:
    """Validate one reward result: a score (and step scores) must be a finite number or None.

    A non-number, NaN or inf becomes score None with ``info["error"]`` naming the reward and the sample,
    so the composer counts it as a failure (``reward/errors``), never as a score.
    """
    if not isinstance(result, RewardResult):
        return RewardResult(score=None, info={"error": f"reward {name!r} on sample {sample}: returned "
                                              f"{type(result).__name__}, not RewardResult"})
    bad = None
    score = None if result.score is None else as_score(result.score)
    if result.score is not None and (score is None or not math.isfinite(score)):
        bad = f"score {_show(result.score)}"
    steps = []
    for step in result.steps:
        value = as_score(step.score)
        if value is None or not math.isfinite(value):
            bad = bad or f"step score {_show(step.score)}"
            break
        steps.append(StepScore(step.start, step.end, value))
    if bad is not None:
        return RewardResult(score=None, info={**result.info, "error": f"reward {name!r} on sample {sample}: {bad} "
                                              f"is not a finite number"})
    if score is None and not steps:
        return result
    return replace(result, score=score, steps=tuple(steps))


def _show(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else f"{value!r:.40}"


def _serve(conn: Any) -> None:
    """Child loop: receive (prompts, jobs), send back (index, result) per job, in order."""
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        prompts, jobs, offset = message
        for i, job in enumerate(jobs):
            conn.send((offset + i, call_safely(job.fn, job.completion, prompts[job.prompt_index], job.params)))


class RewardWorker:
    """A persistent child process that runs reward jobs with a per-job time limit."""

    def __init__(self, timeout_s: float = 5.0, start_method: str = "forkserver") -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        methods = mp.get_all_start_methods()
        if start_method not in methods:
            raise ValueError(f"unknown start method {start_method!r}; valid here: {', '.join(methods)}")
        self.timeout_s = timeout_s
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(["reinforced.rewards"])
        self._proc: Any = None
        self._conn: Any = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True, name="reinforced-rewards")
        self._proc.start()
        child.close()
        self._conn = parent
        # start-up (imports) is not charged to the first job's time limit
        if not parent.poll(_STARTUP_S) or parent.recv() != "ready":
            self._kill()
            raise RuntimeError(f"the reward worker did not start within {_STARTUP_S} s")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def run(self, jobs: Sequence[Job], prompts: Sequence[Prompt]) -> list[RewardResult]:
        """Results of ``jobs`` in order; a job that overruns ``timeout_s`` or kills the child scores None."""
        results: list[RewardResult | None] = [None] * len(jobs)
        # Images never cross the pipe: rewards read sizes from metadata (see grounding.py).
        light = [p if not p.images else _without_images(p) for p in prompts]
        start = 0
        while start < len(jobs):
            if self._proc is None or not self._proc.is_alive():
                self._kill()
                self._start()
            self._conn.send((light, list(jobs[start:]), start))
            start = self._collect(results, start, len(jobs))
        return [r if r is not None else RewardResult(score=None, info={"error": "no result"}) for r in results]

    def _collect(self, results: list[RewardResult | None], start: int, total: int) -> int:
        """Receive results from ``start`` on; on a time-out or crash, record it and return the next index."""
        for expected in range(start, total):
            began = time.monotonic()
            try:
                ready = self._conn.poll(self.timeout_s)
                if ready:
                    index, result = self._conn.recv()
                    results[index] = result
                    continue
                error = f"timed out after {self.timeout_s:g} s"
            except (EOFError, OSError, ConnectionError) as err:
                error = f"reward worker died ({type(err).__name__}) after {time.monotonic() - began:.1f} s"
            results[expected] = RewardResult(score=None, info={"error": error})
            self._kill()
            self.restarts += 1
            return expected + 1
        return total

    def close(self) -> None:
        """Stop the child process."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(timeout=2)
            except (OSError, ValueError):
                pass
        self._kill()

    def __del__(self) -> None:  # best effort; RewardComposer.close() is the documented way
        try:
            self.close()
        except Exception:
            pass


def _without_images(prompt: Prompt) -> Prompt:
    from dataclasses import replace

    return replace(prompt, images=())
