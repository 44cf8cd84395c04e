"""From scored rollout groups to the padded tensors of one update (TrainBatch).

Rows are group-major: row ``i*G + j`` is completion j of prompt i. Prompts are left-padded to S and
completions right-padded to T so that completion token t of every row is column S + t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reinforced.rewards import step_token_rewards as place_step_rewards
from reinforced.rewards import token_char_ends
from reinforced.types import RolloutGroup, StepScore, TrainBatch


def collate_groups(groups: Sequence[RolloutGroup], pad_id: int) -> TrainBatch:
    """Pad prompts and completions of every group into one TrainBatch (advantages zero for now)."""
    rows = [(i, g, c) for i, g in enumerate(groups) for c in g.completions]
    if not rows:
        raise ValueError("cannot build a training batch from zero completions")
    n = len(rows)
    s = max(len(g.prompt_ids) for g in groups)
    t = max(1, max(c.num_tokens for _, _, c in rows))
    input_ids = torch.full((n, s + t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, s + t), dtype=torch.long)
    completion_mask = torch.zeros((n, t), dtype=torch.bool)
    old_logprobs = torch.zeros((n, t), dtype=torch.float32)
    for r, (_, group, completion) in enumerate(rows):
        p = group.prompt_ids
        if not p:
            raise ValueError(f"prompt {group.prompt.prompt_id!r}: rollout returned no prompt token ids")
        input_ids[r, s - len(p) : s] = torch.tensor(p, dtype=torch.long)
        attention_mask[r, s - len(p) : s] = 1
        k = completion.num_tokens
        if k:
            input_ids[r, s : s + k] = torch.tensor(completion.token_ids, dtype=torch.long)
            attention_mask[r, s : s + k] = 1
            completion_mask[r, :k] = True
            old_logprobs[r, :k] = torch.tensor(completion.logprobs, dtype=torch.float32)
    vision = tuple(group.vision for _, group, _ in rows)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        old_logprobs=old_logprobs,
        advantages=torch.zeros((n, t), dtype=torch.float32),
        group_index=torch.tensor([i for i, _, _ in rows], dtype=torch.long),
        is_truncated=torch.tensor([c.truncated for _, _, c in rows], dtype=torch.bool),
        prompt_len=s,
        vision=vision if any(v is not None for v in vision) else (),
    )


def rewards_matrix(groups: Sequence[RolloutGroup]) -> torch.Tensor:
    """[P, G] composed rewards; every group must be scored and of the same size."""
    sizes = {g.group_size for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups of different sizes {sorted(sizes)} cannot form a [P, G] reward matrix")
    if any(g.rewards is None for g in groups):
        raise ValueError("every group must be scored before advantages are computed")
    return torch.tensor([list(g.rewards) for g in groups], dtype=torch.float32)  # type: ignore[arg-type]


def accuracy_matrix(groups: Sequence[RolloutGroup]) -> torch.Tensor:
    """[P, G] verifier correctness (what dynamic sampling and curricula judge on)."""
    return torch.tensor([list(g.accuracy or [0.0] * g.group_size) for g in groups], dtype=torch.float32)


def step_token_rewards(
    groups: Sequence[RolloutGroup], num_tokens: int, decode: Callable[[Sequence[int]], str]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Process rewards as tensors: ([N, T] step scores on the token ending each step, [N, T] step-end mask).

    Character spans from the reward become token positions through the tokenizer's own decoding
    (``rewards.token_char_ends``). Returns None when no completion carries step scores.
    """
    if not any(any(steps) for g in groups for steps in g.step_rewards):
        return None
    rows = [(g, j) for g in groups for j in range(g.group_size)]
    scores = torch.zeros((len(rows), num_tokens), dtype=torch.float32)
    ends_mask = torch.zeros((len(rows), num_tokens), dtype=torch.bool)
    for r, (group, j) in enumerate(rows):
        steps: tuple[StepScore, ...] = group.step_rewards[j] if group.step_rewards else ()
        token_ids = group.completions[j].token_ids
        if not steps or not token_ids:
            continue
        ends = token_char_ends(token_ids, decode)
        scores[r, : len(ends)] = torch.tensor(place_step_rewards(steps, ends))
        ones = place_step_rewards(tuple(StepScore(s.start, s.end, 1.0) for s in steps), ends)
        ends_mask[r, : len(ends)] = torch.tensor(ones) > 0
    return scores, ends_mask
