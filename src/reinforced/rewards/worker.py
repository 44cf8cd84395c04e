"""Run reward functions under a time limit in a persistent worker process.

A reward parses model text; a pathological input can make a parser (or SymPy inside Math-Verify) run
for minutes. Rewards therefore run in one long-lived child process fed a whole batch per message; the
parent waits at most ``timeout_s`` for each result. A job that overruns is scored None with
``info["error"] = "timed out ..."``, the child is killed and a fresh one continues with the rest of the
batch. Exceptions inside a reward become score None with the error text. The child is started with
``forkserver`` (a clean interpreter that imports ``reinforced.rewards`` once; respawns are cheap forks of
it) so no trainer threads or CUDA state are inherited. Math-Verify's own signal-based time-outs only work
in a main thread, so they are disabled in the rewards and the limit is enforced here, from outside.

User rewards (``custom.py``): jobs cross the pipe pickled by cloudpickle, so a function defined in the user's
``__main__`` script or a notebook travels by value (plain pickle sends a reference the child cannot import,
which used to fail the whole batch, built-in rewards included). The child never imports the user's main
module: multiprocessing would re-run an unguarded script there (``_main_hidden``). A batch-level reward
(``BatchJob``, TRL's ``f(completions, prompts, **columns)``) is one job whose limit is ``timeout_s`` per
completion it scores.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import numbers
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from reinforced.types import Prompt, RewardResult, StepScore

_STARTUP_S = 120.0


@dataclass(frozen=True)
class Job:
    """One reward call: ``fn(completion, prompts[prompt_index], **params)``."""

    fn: Callable[..., RewardResult]
    completion: str
    prompt_index: int
    params: dict[str, Any] = field(default_factory=dict)

    size = 1  # completions scored: the job's time limit is timeout_s x size

    def run(self, prompts: Sequence[Prompt]) -> RewardResult:
        return call_safely(self.fn, self.completion, prompts[self.prompt_index], self.params)

    def failure(self, error: str) -> RewardResult:
        return RewardResult(score=None, info={"error": error})


@dataclass(frozen=True)
class BatchJob:
    """One call of a batch-level reward: ``fn(completions, [prompts[i] for i in prompt_indices], **params)``
    -> one result per completion (``custom.BatchReward``)."""

    fn: Callable[..., Sequence[RewardResult]]
    completions: tuple[str, ...]
    prompt_indices: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.completions)

    def run(self, prompts: Sequence[Prompt]) -> tuple[RewardResult, ...]:
        try:
            return tuple(self.fn(list(self.completions), [prompts[i] for i in self.prompt_indices], **self.params))
        except Exception as err:  # a failing batch reward scores None for its completions, never kills the run
            return self.failure(_error_text(err))

    def failure(self, error: str) -> tuple[RewardResult, ...]:
        return (RewardResult(score=None, info={"error": error}),) * self.size


def _error_text(err: Exception) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} ({last.name}:{last.lineno})"


def call_safely(fn: Callable[..., Any], completion: str, prompt: Prompt, params: dict[str, Any]) -> RewardResult:
    """Call a reward; an exception or a wrong return type becomes score None with the error in info."""
    try:
        result = fn(completion, prompt, **params)
    except Exception as err:  # any failure of a reward on model text must not kill the run
        return RewardResult(score=None, info={"error": _error_text(err)})
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
    _one_thread()
    conn.send("ready")
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        message = pickle.loads(raw)  # cloudpickle's output: functions of __main__ arrive by value
        if message is None:
            return
        prompts, jobs, offset = message
        for i, job in enumerate(jobs):
            conn.send((offset + i, job.run(prompts)))


def _one_thread() -> None:
    """The worker computes between rollout and update, never during either, but it must not size thread pools
    for the whole machine: one torch / OpenMP thread (also for the processes its rewards start)."""
    import os

    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start processes without telling them the parent's ``__main__``.

    multiprocessing's spawn/forkserver children re-import the parent's main script (as ``__mp_main__``) so
    that pickled references into it resolve; an unguarded script would then train again inside the reward
    worker. Our jobs carry ``__main__`` functions by value, so the child needs no main module: the
    preparation data (``multiprocessing.spawn.get_preparation_data``) reads ``__main__.__spec__`` and
    ``__file__``, which are hidden for the duration of ``Process.start()``.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


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
            # Math-Verify (SymPy, ANTLR) takes seconds to import: preloaded once in the fork server, so a
            # respawned child (after a time-out) is a cheap fork and its first job is not charged for imports.
            self._ctx.set_forkserver_preload(["reinforced.rewards", "math_verify"])
        self._proc: Any = None
        self._conn: Any = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True, name="reinforced-rewards")
        with _main_hidden():
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

    def run(self, jobs: Sequence[Job | BatchJob], prompts: Sequence[Prompt]) -> list[Any]:
        """Results of ``jobs`` in order (a tuple of results for a ``BatchJob``); a job that overruns its time
        limit or kills the child scores None."""
        results: list[Any] = [None] * len(jobs)
        # Images never cross the pipe: rewards read sizes from metadata (see grounding.py).
        light = [p if not p.images else _without_images(p) for p in prompts]
        start = 0
        while start < len(jobs):
            if self._proc is None or not self._proc.is_alive():
                self._kill()
                self._start()
            self._conn.send_bytes(cloudpickle.dumps((light, list(jobs[start:]), start)))
            start = self._collect(jobs, results, start)
        return [r if r is not None else j.failure("no result") for j, r in zip(jobs, results, strict=True)]

    def _collect(self, jobs: Sequence[Job | BatchJob], results: list[Any], start: int) -> int:
        """Receive results from ``start`` on; on a time-out or crash, record it and return the next index."""
        for expected in range(start, len(jobs)):
            began = time.monotonic()
            limit = self.timeout_s * jobs[expected].size
            try:
                ready = self._conn.poll(limit)
                if ready:
                    index, result = self._conn.recv()
                    results[index] = result
                    continue
                error = f"timed out after {limit:g} s"
            except (EOFError, OSError, ConnectionError) as err:
                error = f"reward worker died ({type(err).__name__}) after {time.monotonic() - began:.1f} s"
            results[expected] = jobs[expected].failure(error)
            self._kill()
            self.restarts += 1
            return expected + 1
        return len(jobs)

    def close(self) -> None:
        """Stop the child process."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send_bytes(pickle.dumps(None))
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
