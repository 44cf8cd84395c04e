"""Property tests: no string crashes any parser or reward, and scores stay in their documented ranges."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reinforced.rewards import REWARDS, evaluate_expression, extract_answer, parse_number
from reinforced.rewards.grounding import parse_detections
from reinforced.rewards.gui import parse_action
from reinforced.rewards.mathematics import ExpressionError
from reinforced.rewards.worker import call_safely
from reinforced.types import Prompt

ALPHABET = st.sampled_from(list("<>/()[]{},.:;=+-*÷×\\$%'\" \n0123456789abxyABCDE") +
                           ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "\\frac{", "### Step 1:",
                            "### The final answer is:", "'action': 'click'", "[1, 2, 3, 4]"])
TEXT = st.lists(ALPHABET, max_size=40).map("".join)

PROMPT = Prompt("p", "Use 3, 4 and 12 to make 24.", answer="24", choices=("1", "2", "24"),
                metadata={"numbers": [3, 4, 12], "puzzle": "3102200002100320", "box": [0, 0, 10, 10],
                          "boxes": [[0, 0, 10, 10]], "action": "click", "key_steps": ["12"],
                          "image_size": (100, 100), "objects": [{"box": [0, 0, 10, 10], "label": "a"}]})
CONTEXT = {"num_tokens": 7, "truncated": False, "correct": 1.0, "group_num_tokens": (3, 7), "group_correct": (1.0, 0.0)}
SKIP = {"judge", "prm"}  # need a model; covered in their own tests
EXTRA = {"overlong": {"max_tokens": 10}, "cosine_length": {"max_tokens": 10}}
PURE = [n for n in REWARDS.names() if n not in SKIP and not n.startswith("_")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_parsers_never_crash(text):
    extract_answer(text, "last_number")
    parse_number(text)
    parse_detections(text)
    parse_action(text)
    try:
        evaluate_expression(text)
    except ExpressionError:
        pass


@pytest.mark.parametrize("name", PURE)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_rewards_never_raise(name, text):
    import inspect

    fn = REWARDS[name]
    names = inspect.signature(fn).parameters
    params = {**{k: v for k, v in CONTEXT.items() if k in names}, **EXTRA.get(name, {})}
    result = fn(text, PROMPT, **params)  # raises on a crash; call_safely would hide it
    assert result == call_safely(fn, text, PROMPT, params)  # deterministic
    assert result.score is None or -2.0 <= result.score <= 3.0
