"""Records passed between the stages of one RL step.

    prompts --rollout--> RolloutGroup (G completions) --rewards--> ScoredGroup --filters/advantages-->
    TrainBatch (padded tensors) --update--> stats

Notation used in shape comments: P prompts per step, G completions per prompt (group_size), N = P*G
samples, T the longest completion in the batch (tokens), S the longest prompt (tokens).

Records are frozen dataclasses: a stage returns a new record (``dataclasses.replace``) and never
overwrites what an earlier stage produced (rewards stay rewards; advantages are a separate field).
Pure module: no transformers, no torch.distributed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length"]
ImageLike = Any  # a path (str / os.PathLike) or a PIL.Image.Image; loaded lazily by models.processing


@dataclass(frozen=True)
class Prompt:
    """One task instance. Ground truth lives in typed fields, never in free-form kwargs.

    ``question`` is the user text; ``messages`` (OpenAI-style chat, optional) overrides it when the
    dataset provides a full conversation. ``images`` are referenced in order by image placeholders.
    """

    prompt_id: str
    question: str
    answer: str | None = None
    choices: tuple[str, ...] = ()
    images: tuple[ImageLike, ...] = ()
    messages: tuple[Mapping[str, Any], ...] = ()
    answer_type: str = "text"  # number | fraction | choice | latex | expression_equals_target | grid | box | ...
    task: str = "default"  # dataset or procedural task name; selects per-task reward sets and metrics
    reward_set: str | None = None  # a named reward composition from config (None: the run's default)
    system: str | None = None  # system prompt (template), None: the run's template decides
    metadata: Mapping[str, Any] = field(default_factory=dict)  # boxes, key steps, difficulty, numbers, ...

    @property
    def num_images(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class SamplingParams:
    """How the rollout engine samples. ``top_k=0`` and ``top_p=1.0`` disable those filters."""

    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled completion. ``logprobs`` are the behaviour policy's, token by token, under the
    sampling distribution's *model* logprobs at temperature 1 scaled as the engine documents."""

    text: str
    token_ids: tuple[int, ...]  # [T_i]
    logprobs: tuple[float, ...]  # [T_i]  log pi_old(token | prefix)
    finish_reason: FinishReason

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class StepScore:
    """A process-reward score for one reasoning step, located by its character span in the completion."""

    start: int  # character offset, inclusive
    end: int  # character offset, exclusive
    score: float


@dataclass(frozen=True)
class RewardResult:
    """What a reward function returns for one completion.

    ``score`` is None when the reward does not apply or failed (the error is in ``info["error"]``).
    ``components`` are named sub-scores logged separately (e.g. ``{"action_type": 1.0, "click": 0.0}``).
    ``steps`` carries per-step process rewards (character spans) for token-level advantages.
    """

    score: float | None
    components: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[StepScore, ...] = ()


CORRECT_THRESHOLD = 0.5
"""An accuracy (the verifier's 0..1 score) strictly above this counts as a correct answer.

One definition for every consumer (length shaping, length and rollout statistics, pass@k, filters):
binary verifiers give 0 or 1 and are unaffected; for partial credit (IoU, F1, grid cells) "correct"
means more than half the credit, the IoU > 0.5 hit of detection evaluation (PASCAL VOC; VLM-R1's REC
eval). A NaN accuracy is a failed verifier (see ``rewards/compose.py``): neither correct nor wrong, so
callers leave it out (``valid``) before counting.
"""


def is_correct(accuracy: float) -> bool:
    """Whether an accuracy counts as a correct answer (``> CORRECT_THRESHOLD``; NaN is not).

    >>> [is_correct(a) for a in (1.0, 0.75, 0.5, 0.0)]
    [True, True, False, False]
    """
    return accuracy > CORRECT_THRESHOLD


def valid(values: Sequence[float]) -> list[float]:
    """The finite entries of ``values``: NaN marks a sample whose reward or verifier failed.

    >>> valid([1.0, float("nan"), 0.0])
    [1.0, 0.0]
    """
    return [v for v in values if math.isfinite(v)]


@dataclass(frozen=True)
class RolloutGroup:
    """A prompt and its G completions, later scored.

    ``rewards`` [G]: the composed, weighted score (what advantages are computed from).
    ``accuracy`` [G]: the verifier's correctness (0/1 or partial), kept apart from shaped rewards so
    filters such as DAPO's dynamic sampling judge on accuracy, not on the shaped score.
    ``components``: reward name -> [G] raw component scores (None where it did not apply).
    ``step_rewards``: per completion, the process-reward steps (empty when none).
    ``error_texts``: per completion, ``"<reward>: <error>"`` for each reward term that failed on it.
    """

    prompt: Prompt
    completions: tuple[Completion, ...]
    rewards: tuple[float, ...] | None = None  # [G]
    accuracy: tuple[float, ...] | None = None  # [G]
    components: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)
    step_rewards: tuple[tuple[StepScore, ...], ...] = ()  # [G][num_steps]
    reward_errors: int = 0
    error_texts: tuple[tuple[str, ...], ...] = ()  # [G][k] "reward: error" of each failed term of a sample
    prompt_ids: tuple[int, ...] = ()  # [S_i] the encoded prompt the completions continue
    vision: Mapping[str, Any] | None = None  # processor outputs for this prompt's images (None: text only)

    @property
    def group_size(self) -> int:
        return len(self.completions)

    def scored(self, **kwargs: Any) -> RolloutGroup:
        return replace(self, **kwargs)


@dataclass(frozen=True)
class TrainBatch:
    """Padded tensors for the update, built once per step (after filtering and advantages).

    Layout: prompts are left-padded to S and completions right-padded to T, so completion token t of
    every row sits at column S + t of ``input_ids`` and its logit at column S + t - 1.
    ``vision`` holds one dict of processor outputs per sample (None for text-only rows); the model
    adapter collates them per micro-batch, so images stay aligned with their samples under any
    permutation or split.
    """

    input_ids: torch.Tensor  # [N, S+T] long
    attention_mask: torch.Tensor  # [N, S+T] long (0 on padding)
    completion_mask: torch.Tensor  # [N, T] bool, True = token is in the loss
    old_logprobs: torch.Tensor  # [N, T] float, behaviour policy (0 on padding)
    advantages: torch.Tensor  # [N, T] float (sequence-level advantages broadcast over T)
    group_index: torch.Tensor  # [N] long, which prompt (group) each row came from
    is_truncated: torch.Tensor  # [N] bool
    prompt_len: int  # S
    ref_logprobs: torch.Tensor | None = None  # [N, T], only when a KL term needs it
    returns: torch.Tensor | None = None  # [N, T], critic targets (value-based methods)
    old_values: torch.Tensor | None = None  # [N, T], critic values at rollout (value clipping)
    rollout_logprobs: torch.Tensor | None = None  # [N, T], the engine's logprobs when old_logprobs are the trainer's (TIS)
    vision: tuple[Mapping[str, torch.Tensor] | None, ...] = ()  # [N] per-sample vision inputs

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def completion_ids(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_len :]

    def select(self, index: Sequence[int] | torch.Tensor) -> TrainBatch:
        """Rows ``index`` of every per-sample field, in that order (used by shuffling and splitting)."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        vision = tuple(self.vision[i] for i in idx.tolist()) if self.vision else ()
        return replace(
            self,
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            completion_mask=self.completion_mask[idx],
            old_logprobs=self.old_logprobs[idx],
            advantages=self.advantages[idx],
            group_index=self.group_index[idx],
            is_truncated=self.is_truncated[idx],
            ref_logprobs=take(self.ref_logprobs),
            returns=take(self.returns),
            old_values=take(self.old_values),
            rollout_logprobs=take(self.rollout_logprobs),
            vision=vision,
        )

    def to(self, device: torch.device | str) -> TrainBatch:
        """Every tensor (vision inputs included) on ``device``; a no-op copy when already there."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        vision = tuple(None if v is None else {k: t.to(device) for k, t in v.items()} for v in self.vision)
        return replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            completion_mask=self.completion_mask.to(device), old_logprobs=self.old_logprobs.to(device),
            advantages=self.advantages.to(device), group_index=self.group_index.to(device),
            is_truncated=self.is_truncated.to(device), ref_logprobs=move(self.ref_logprobs),
            returns=move(self.returns), old_values=move(self.old_values),
            rollout_logprobs=move(self.rollout_logprobs), vision=vision,
        )

    def split(self, micro_batch_size: int) -> list[TrainBatch]:
        """Consecutive micro-batches of at most ``micro_batch_size`` rows."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        n = self.num_samples
        return [self.select(range(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]
