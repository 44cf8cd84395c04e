"""Sample filters: DAPO dynamic sampling, overlong filtering, CPPO completion pruning.

* Dynamic sampling (DAPO, arXiv 2503.14476, Eq. 11 and Algorithm 1): a prompt whose G completions are all
  correct or all wrong has zero advantage and no gradient, yet dilutes the batch. Keep a group iff the
  population std of its *accuracy* is > 0 (or G = 1), then draw more prompts until the batch holds
  ``num_prompts`` kept groups (Algorithm 1: sample until full). ``max_rounds`` caps the rounds (0: no cap);
  at the cap with the batch short the policy ``on_cap`` either raises (``error``, as verl's recipe does) or
  trains on the groups kept (``partial``, reported as ``filter/missing_groups``). Accuracy, not the shaped
  score: a length or format bonus must not rescue a group the verifier scored uniformly.
* Overlong filtering (DAPO section 3.4): truncated completions leave the loss mask, so they neither
  contribute nor count in the normaliser.
* CPPO (Lin et al., arXiv 2503.22342): a completion's share of the GRPO gradient scales with |A_i|; after
  advantages are computed on the full group keep only the ``round(G (1 - P))`` completions with the
  largest |A| per prompt (the paper's per-question top-k), and sample ``1/(1-P)`` times more prompts
  (dynamic completion allocation) so the batch stays full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from reinforced.types import CORRECT_THRESHOLD

T = TypeVar("T")


def informative_groups(accuracy: Tensor) -> Tensor:
    """Groups whose accuracy is not uniform (or of size one); [P, G] -> [P] bool.

    NaN entries (failed verifiers) are left out: a group is informative when its finite accuracies are
    not all equal, so a failure neither rescues nor drops a group.

    >>> informative_groups(torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, float("nan"), 0, 0]]))
    tensor([ True, False, False,  True])
    """
    if accuracy.shape[1] == 1:
        return torch.ones(accuracy.shape[0], dtype=torch.bool, device=accuracy.device)
    ok = torch.isfinite(accuracy)
    high = torch.where(ok, accuracy, -math.inf).amax(dim=1)
    low = torch.where(ok, accuracy, math.inf).amin(dim=1)
    return high > low  # exact, unlike std > 0 on equal non-binary values


def accuracy_stats(accuracy: Tensor) -> dict[str, float]:
    """Fractions of all-correct, all-wrong and zero-std groups of ``accuracy`` [P, G] (0/1 or partial).

    >>> accuracy_stats(torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 0]]))["frac_all_correct"]
    0.3333333432674408
    """
    uniform = ~informative_groups(accuracy) if accuracy.shape[1] > 1 else torch.zeros(accuracy.shape[0], dtype=torch.bool)
    ok = torch.isfinite(accuracy)  # NaN: a failed verifier, neither correct nor wrong
    correct = accuracy > CORRECT_THRESHOLD  # types.is_correct
    return {
        "frac_all_correct": float(((correct | ~ok).all(dim=1) & ok.any(dim=1)).float().mean()),
        "frac_all_wrong": float(((~correct | ~ok).all(dim=1) & ok.any(dim=1)).float().mean()),
        "frac_zero_std_groups": float(uniform.float().mean()),
    }


class BatchNotFilled(RuntimeError):
    """Dynamic sampling reached ``max_rounds`` with the batch short (policy ``on_cap='error'``), or with
    nothing kept at all."""


def fill_batch(
    draw: Callable[[int], tuple[Sequence[T], Tensor]],
    num_prompts: int,
    max_rounds: int,
    on_cap: str = "error",
) -> tuple[list[T], dict[str, float]]:
    """DAPO Algorithm 1: ``draw(n)`` samples and scores n prompts, returning their groups and which to keep
    ([n] bool); rounds repeat until ``num_prompts`` groups are kept (``max_rounds`` 0: no cap).

    After the first round the draw size is the missing count divided by the pass rate seen so far (at
    most ``num_prompts``). At the cap with the batch short, ``on_cap='error'`` raises BatchNotFilled (verl's
    DAPO recipe) and ``'partial'`` returns the groups kept so far (``filter/missing_groups`` counts the
    shortfall); nothing kept at all is always an error.

    >>> import itertools; keep = itertools.cycle([False, True])
    >>> kept, stats = fill_batch(lambda n: (list(range(n)), torch.tensor([next(keep) for _ in range(n)])), 2, 5)
    >>> len(kept), stats["filter/rounds"], stats["filter/missing_groups"]
    (2, 2.0, 0.0)
    """
    if on_cap not in ("error", "partial"):
        raise ValueError(f"dynamic sampling on_cap={on_cap!r} is not one of 'error', 'partial'")
    kept: list[T] = []
    drawn = rounds = 0
    while len(kept) < num_prompts and not (max_rounds > 0 and rounds >= max_rounds):
        need = num_prompts - len(kept)
        rate = len(kept) / drawn if drawn else 1.0
        n = need if rate >= 1.0 else min(num_prompts, math.ceil(need / max(rate, 1.0 / num_prompts)))
        groups, keep = draw(max(n, need))
        kept += [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
        drawn += len(groups)
        rounds += 1
    if len(kept) < num_prompts and (on_cap == "error" or not kept):
        raise BatchNotFilled(
            f"dynamic sampling kept {len(kept)} of {num_prompts} prompts after {rounds} rounds (pass rate "
            f"{len(kept) / max(drawn, 1):.1%}); raise dynamic_sampling.max_rounds (0: no cap), set "
            f"dynamic_sampling.on_cap=partial to train on a short batch, or use prompts of mixed difficulty"
        )
    stats = {"filter/rounds": float(rounds), "filter/pass_rate": len(kept) / max(drawn, 1),
             "filter/num_drawn": float(drawn), "filter/kept_groups": float(min(len(kept), num_prompts)),
             "filter/missing_groups": float(max(0, num_prompts - len(kept)))}
    return kept[:num_prompts], stats


def mask_truncated(completion_mask: Tensor, is_truncated: Tensor) -> Tensor:
    """Overlong filtering: ``completion_mask`` [N, T] with the rows of truncated completions [N] cleared.

    >>> mask_truncated(torch.ones(2, 2, dtype=torch.bool), torch.tensor([False, True]))
    tensor([[ True,  True],
            [False, False]])
    """
    return completion_mask.bool() & ~is_truncated.bool().unsqueeze(1)


def sequence_advantage(advantages: Tensor, completion_mask: Tensor) -> Tensor:
    """Mean advantage over each row's loss tokens (the outcome advantage when broadcast); [N, T] -> [N]."""
    m = completion_mask.to(advantages.dtype)
    return (advantages * m).sum(1) / m.sum(1).clamp(min=1)


def top_abs_per_group(scores: Tensor, group_index: Tensor, rate: float) -> Tensor:
    """Keep the ``max(1, round(G_g (1 - rate)))`` rows of each group with the largest ``|score|``; [N] -> [N] bool.

    Ties go to the earlier row (a stable sort), so the result is deterministic.

    >>> top_abs_per_group(torch.tensor([0.976938, -1.321739, -0.172401, 0.517202]), torch.zeros(4, dtype=torch.long), 0.5)
    tensor([ True,  True, False, False])
    """
    keep = torch.zeros_like(group_index, dtype=torch.bool)
    for g in torch.unique(group_index).tolist():
        rows = (group_index == g).nonzero().squeeze(1)  # [G_g]
        k = max(1, round(rows.numel() * (1.0 - rate)))
        order = torch.sort(scores[rows].abs(), descending=True, stable=True).indices
        keep[rows[order[:k]]] = True
    return keep


def length_stats(lengths: Tensor, accuracy: Tensor, is_truncated: Tensor) -> dict[str, float]:
    """Completion-length metrics of one step: mean, correct vs wrong mean, truncated fraction; all [N].

    Correct is ``types.is_correct`` (accuracy > 0.5); NaN accuracy (a failed verifier) is on neither
    side. A side with no completions reports 0.

    >>> s = length_stats(torch.tensor([10, 20, 30, 40]), torch.tensor([1.0, 0, 0, 1]), torch.tensor([0, 0, 1, 0]))
    >>> s["len/correct_mean"], s["len/incorrect_mean"], s["len/truncated_frac"]
    (25.0, 25.0, 0.25)
    """
    lens = lengths.double()
    acc = accuracy.reshape(-1)
    correct = acc > CORRECT_THRESHOLD  # types.is_correct
    wrong = torch.isfinite(acc) & ~correct

    def mean(sel: Tensor) -> float:
        return float(lens[sel].mean()) if bool(sel.any()) else 0.0

    return {
        "len/mean": float(lens.mean()) if lens.numel() else 0.0,
        "len/correct_mean": mean(correct),
        "len/incorrect_mean": mean(wrong),
        "len/truncated_frac": float(is_truncated.bool().double().mean()) if is_truncated.numel() else 0.0,
    }
