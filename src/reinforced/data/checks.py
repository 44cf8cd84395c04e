"""Load-time checks of a run's prompts against its set-up, so a bad row stops the run before any work.

* ``check_gold``: every prompt whose reward set has an accuracy term that reads gold carries a gold answer
  (``answer``, or a gold key in ``metadata`` such as ``target`` or ``boxes``), and names a reward set that
  exists. Without it the verifier scores None on every completion and the prompt silently teaches nothing.
* ``check_prompt_lengths``: the prompt, rendered with the template and the chat template (images expanded
  to their tokens), fits ``rollout.max_prompt_tokens``; otherwise the engine would fail mid-run.

One pass over the rows of file sources; procedural sources, infinite or generated, are checked on the
first ``sample_size`` prompts. Errors name ``file:line`` (files) or the sample id (tasks) of up to
``MAX_LISTED`` offending rows, and how many there are in all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from reinforced.config import RewardTerm
from reinforced.data.datasets import DataError
from reinforced.data.sources import Source, locate
from reinforced.types import Prompt

# Metadata keys that hold the gold answer of verifiers that do not read ``Prompt.answer`` (expression
# targets, grounding boxes, GUI actions).
GOLD_METADATA_KEYS = ("target", "box", "boxes", "action", "point")
MAX_LISTED = 5


def checked_prompts(sources: Sequence[Source], sample_size: int = 16) -> Iterator[tuple[str, Prompt]]:
    """(where, prompt) for every row of fixed pools and the first ``sample_size`` prompts of infinite ones."""
    for source in sources:
        count = source.size if source.size is not None else sample_size
        for i in range(count):
            yield locate(source, i), source.get(i)


def has_gold(prompt: Prompt) -> bool:
    """A gold answer in ``answer`` or in one of ``GOLD_METADATA_KEYS``."""
    return prompt.answer is not None or any(k in prompt.metadata for k in GOLD_METADATA_KEYS)


def _raise(problems: list[str], what: str) -> None:
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} row(s) {what}: {listed}{more}")


def check_gold(sources: Sequence[Source], default_terms: Sequence[RewardTerm],
               reward_sets: Mapping[str, Sequence[RewardTerm]], sample_size: int = 16) -> None:
    """Every prompt's reward set exists, and a prompt scored by an accuracy term that can read a gold answer
    (``rewards.custom.reads_gold``: not a batch reward declaring its columns without ``answer``) has one."""
    from reinforced.rewards.custom import reads_gold  # local: importing rewards loads every built-in

    unknown: list[str] = []
    missing: list[str] = []
    for where, prompt in checked_prompts(sources, sample_size):
        if prompt.reward_set is not None and prompt.reward_set not in reward_sets:
            unknown.append(f"{where}: reward_set {prompt.reward_set!r}")
            continue
        terms = default_terms if prompt.reward_set is None else reward_sets[prompt.reward_set]
        accuracy = [t.name for t in terms if t.accuracy and reads_gold(t.name)]
        if accuracy and not has_gold(prompt):
            missing.append(f"{where}: {prompt.prompt_id!r} (scored by {', '.join(accuracy)})")
    _raise(unknown, f"name a reward set that is not defined (defined: {', '.join(sorted(reward_sets)) or 'none'};"
                    " add it under rewards.sets)")
    _raise(missing, "have no gold answer for their accuracy reward; give each an 'answer' "
                    f"(or metadata {'/'.join(GOLD_METADATA_KEYS)}) or remove them (a batch reward that "
                    "declares the columns it reads without 'answer' or **columns needs none)")


def check_prompt_lengths(sources: Sequence[Source], num_tokens: Callable[[Prompt], int], max_tokens: int,
                         sample_size: int = 16) -> None:
    """Every checked prompt is at most ``max_tokens`` long, measured once per row by ``num_tokens``."""
    over = []
    for where, prompt in checked_prompts(sources, sample_size):
        n = num_tokens(prompt)
        if n > max_tokens:
            over.append(f"{where}: {prompt.prompt_id!r} is {n} tokens")
    _raise(over, f"are longer than rollout.max_prompt_tokens={max_tokens} after the chat template; shorten or "
                 "drop them, or raise the limit")
