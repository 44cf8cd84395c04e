"""Templates: HF chat messages for text, image and conversation prompts."""

from __future__ import annotations

import pytest

from reinforced.data import TEMPLATES, to_messages
from reinforced.data.templates import THINK_ANSWER_SYSTEM
from reinforced.registry import UnknownNameError
from reinforced.types import Prompt


def test_think_answer_has_system_and_one_shot_example() -> None:
    msgs = to_messages(Prompt("p", "What is 2 + 3?"), "think_answer")
    assert msgs[0] == {"role": "system", "content": THINK_ANSWER_SYSTEM}
    assert "<think>" in msgs[0]["content"] and "<answer>" in msgs[0]["content"]
    example = msgs[2]["content"]
    assert example.startswith("<think>") and example.endswith("</answer>") and msgs[2]["role"] == "assistant"
    assert msgs[-1] == {"role": "user", "content": "What is 2 + 3?"}


@pytest.mark.parametrize(("name", "roles"), [
    ("think_answer_zeroshot", ["system", "user"]), ("boxed", ["system", "user"]), ("plain", ["user"]),
])
def test_other_templates(name: str, roles: list[str]) -> None:
    msgs = to_messages(Prompt("p", "Q?"), name)
    assert [m["role"] for m in msgs] == roles and msgs[-1]["content"] == "Q?"
    if name == "boxed":
        assert "\\boxed{}" in msgs[0]["content"]


def test_image_prompt_uses_content_items_in_placeholder_order() -> None:
    one = to_messages(Prompt("p", "How many?", images=("a.png",)), "plain")
    assert one == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    two = to_messages(Prompt("p", "<image>left vs <image> right", images=("a.png", "b.png")), "plain")
    assert two[0]["content"] == [{"type": "image"}, {"type": "text", "text": "left vs "}, {"type": "image"},
                                 {"type": "text", "text": " right"}]
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but the prompt has 1 image"):
        to_messages(Prompt("p", "<image><image>", images=("a.png",)), "plain")


def test_choices_are_listed_once_with_letters() -> None:
    p = Prompt("p", "Pick one.", answer="B", choices=("3", "4"))
    text = to_messages(p, "think_answer")[-1]["content"]
    assert "A. 3\nB. 4" in text and "letter" in text
    listed = Prompt("p", "Pick one.\nA. 3\nB. 4", answer="B", choices=("3", "4"))
    assert to_messages(listed, "plain")[-1]["content"].count("A. 3") == 1


def test_prompt_system_and_conversation_override() -> None:
    assert to_messages(Prompt("p", "Q", system="Be terse."), "boxed")[0]["content"] == "Be terse."
    conv = Prompt("p", "<image>Count.", images=("a.png",),
                  messages=({"role": "system", "content": "S"}, {"role": "user", "content": "<image>Count."}))
    msgs = to_messages(conv, "think_answer")
    assert msgs == [{"role": "system", "content": "S"},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}]


def test_unknown_template_names_choices() -> None:
    with pytest.raises(UnknownNameError, match="unknown template 'think'.*valid: boxed, plain, think_answer"):
        to_messages(Prompt("p", "Q"), "think")
    assert set(TEMPLATES) == {"think_answer", "think_answer_zeroshot", "boxed", "plain"}
