"""Reward library: ``REWARDS[name](completion: str, prompt: Prompt, **params) -> RewardResult``.

Importing this package registers every reward (``reinforced list rewards`` / ``describe_rewards()``).
Families: format (``format``, ``tag_count``), math and numbers (``math_answer``, ``numeric``, ``count``,
``expression_equals_target``), text (``choice``, ``yes_no``, ``exact_match``, ``label``, ``grid``),
grounding (``iou``, ``detection``, ``point_in_box``), GUI (``gui_action``), process (``step_rar``,
``step_rvr``, ``reasoning_steps``, ``consistency``, ``completeness``, ``grounded_citation``, ``prm``),
judges (``judge``), shaping (``overlong``, ``kimi_length``, ``cosine_length``, ``repetition``).
Metadata keys read: ``numbers``/``target``, ``puzzle``, ``synonyms``, ``box``/``boxes``/``labels``,
``image_size``/``gold_size``/``pred_frame``/``gold_frame``, ``action``/``point``/``text``/``direction``,
``key_steps``, ``quantities``, ``objects``.
``RewardComposer`` combines weighted terms, runs them under a time limit in a worker process and
logs components and reward-hacking detectors.
"""

from reinforced.rewards import (  # noqa: F401  (importing registers the rewards)
    formatting,
    grounding,
    gui,
    judge,
    mathematics,
    process,
    shaping,
    text,
)
from reinforced.rewards.base import (
    CONTEXT_PARAMS,
    REWARDS,
    answer_blocks,
    describe_rewards,
    extract_answer,
    last_boxed,
    normalize_text,
    parse_number,
    reasoning_text,
    register_reward,
    validate_params,
)
from reinforced.rewards.compose import RewardComposer, Term
from reinforced.rewards.formatting import format_ok
from reinforced.rewards.mathematics import evaluate_expression, math_equal
from reinforced.rewards.steps import step_token_rewards, token_char_ends
from reinforced.rewards.worker import RewardWorker

__all__ = [
    "CONTEXT_PARAMS",
    "REWARDS",
    "RewardComposer",
    "RewardWorker",
    "Term",
    "answer_blocks",
    "describe_rewards",
    "evaluate_expression",
    "extract_answer",
    "format_ok",
    "last_boxed",
    "math_equal",
    "normalize_text",
    "parse_number",
    "reasoning_text",
    "register_reward",
    "step_token_rewards",
    "token_char_ends",
    "validate_params",
]
